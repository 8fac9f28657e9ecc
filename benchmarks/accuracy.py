"""Same-budget accuracy, side by side: the pipeline against a literal port of the seed script.

    python -m benchmarks.accuracy                       # the real CIFAR-10 sample in ../shared/data
    python -m benchmarks.accuracy --archive PATH        # any CIFAR-10 binary archive
    python -m benchmarks.accuracy --ablations           # also the one-difference-at-a-time runs
    python -m benchmarks.accuracy --quick --archive PATH --out DIR   # minutes; what the tests run

Every contender trains on the same images (one seeded 90/10 split of the archive's
training set, made by the split stage's own code) for the same number of epochs, with
several seeds, and is scored once on the archive's test set; recipes are chosen on the
validation split, never on the test set. Each run is its own process. Writes
results.json, results.md and curves.png (per-epoch mean over seeds) to --out.
Nothing here is a pass/fail test: targets are reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.accuracy_report import markdown, plot, screening_markdown, summarise
from benchmarks.common import ROOT, machine
from benchmarks.recipes import SEED_NETWORK_TUNED
from benchmarks.runs import run_one, write_split_folder

SAMPLE = ROOT.parent / "shared" / "data" / "cifar-10-sample-binary.tar.gz"

STEP_SCHEDULE = ["train.lr_schedule.kind=step", "train.lr_schedule.warmup_fraction=0"]

CONTENDERS: dict[str, dict] = {
    "seed port (literal)": {"contender": "seed_port"},
    "seed network, defaults": {"contender": "pipeline", "overrides": ["recipe=seed"], "against": "seed port (literal)"},
    "seed network, fast recipe": {
        "contender": "pipeline",
        "overrides": SEED_NETWORK_TUNED,
        "against": "seed network, defaults",
    },
    "fast network (airbench)": {
        "contender": "pipeline",
        "overrides": ["recipe=fast"],
        "against": "seed network, fast recipe",
    },
}

# One difference at a time, each against its neighbour in the table (see results.md).
ABLATIONS: dict[str, dict] = {
    # The seed with one bug fixed; everything else (ImageDataGenerator, one-hot labels,
    # float32, Adam) stays the seed's.
    "seed port, all 3 channels normalised": {
        "contender": "seed_port",
        "port": {"normalize_channels": 3},
        "against": "seed port (literal)",
    },
    "seed port, schedule as intended": {
        "contender": "seed_port",
        "port": {"schedule_fixed": True},
        "against": "seed port (literal)",
    },
    # The pipeline's defaults before issue 7: step boundaries at epochs 50/100/150, which a
    # 15-epoch run never reaches, so the rate stays 0.005 as in the seed.
    "pipeline, previous defaults (step schedule)": {
        "contender": "pipeline",
        "overrides": STEP_SCHEDULE,
        "against": "seed port, all 3 channels normalised",
    },
    "seed network defaults without warm-up": {
        "contender": "pipeline",
        "overrides": ["train.lr_schedule.warmup_fraction=0"],
        "against": "seed network, defaults",
    },
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", type=Path, default=SAMPLE, help="a CIFAR-10 binary .tar.gz")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 1 2 3; 1 2 with --quick)")
    parser.add_argument("--only", nargs="+", help="run only these contenders or ablations (by name)")
    parser.add_argument("--ablations", action="store_true", help="also run the ablations")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, 256 train / 64 test images")
    parser.add_argument(
        "--screen",
        nargs="+",
        metavar="RECIPE",
        help="choose recipes on validation accuracy only (the test set is never read): each RECIPE is a "
        "space-separated list of dvc-style key=value overrides; results are appended to screening.md",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/accuracy")
    parser.add_argument("--render", action="store_true", help="only rewrite results.md and curves.png from --out")
    return parser.parse_args()


def chosen_contenders(args: argparse.Namespace) -> dict[str, dict]:
    """The contenders this invocation runs, by name (an unknown --only name is an error)."""
    if args.screen:
        return {
            recipe: {"contender": "pipeline", "overrides": recipe.split(), "validation_only": True}
            for recipe in args.screen
        }
    everything = CONTENDERS | ABLATIONS
    if not args.only:
        return CONTENDERS | (ABLATIONS if args.ablations else {})
    unknown = [name for name in args.only if name not in everything]
    if unknown:
        sys.exit(f"error: unknown contender {unknown}; choose from {list(everything)}")
    return {name: everything[name] for name in args.only}


def main() -> None:
    args = parse_args()
    if args.render:
        render(args.out)
        return
    if not args.archive.is_file():
        sys.exit(f"error: {args.archive} not found; pass --archive PATH to a CIFAR-10 binary .tar.gz")
    epochs = 1 if args.quick else args.epochs
    seeds = args.seeds or ([1, 2] if args.quick else [1, 2, 3])
    limits = (256, 64) if args.quick else (None, None)
    chosen = chosen_contenders(args)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict[str, list[dict]] = {}
    log_name = "screening-runs.log" if args.screen else "runs.log"
    with tempfile.TemporaryDirectory() as tmp, open(args.out / log_name, "a" if args.screen else "w") as log:
        data = Path(tmp) / "split"
        images = write_split_folder(args.archive, data, *limits)
        for name, contender in chosen.items():
            for seed in seeds:
                print(f"{name}, seed {seed} ...", flush=True)
                result = run_one(name, {**contender, "data": str(data), "seed": seed, "epochs": epochs}, log)
                score = "val accuracy {final_val_accuracy:.3f}" if args.screen else "test accuracy {test_accuracy:.3f}"
                print(f"  {score.format(**result)}, {result['wall_s']:.0f} s", flush=True)
                results.setdefault(name, []).append(result)
                if not args.screen:  # every finished run is kept: a later failure or Ctrl-C loses none
                    save_report(args, images, epochs, seeds, chosen, start, results, complete=False)
    if args.screen:
        table = screening_markdown(results, images, epochs, seeds, machine(), time.strftime("%Y-%m-%d %H:%M"))
        with (args.out / "screening.md").open("a") as out:
            out.write(table)
        print(table)
        return
    save_report(args, images, epochs, seeds, chosen, start, results, complete=True)
    render(args.out)


def save_report(args, images, epochs, seeds, chosen, start, results, complete: bool) -> None:
    report = {
        "archive": args.archive.name,
        "images": images,
        "epochs": epochs,
        "seeds": seeds,
        "machine": machine(),
        "contenders": chosen,
        "total_s": time.perf_counter() - start,
        "complete": complete,
        "summary": {name: summarise(runs) for name, runs in results.items()},
        "runs": results,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=1))


def render(out: Path) -> None:
    report = json.loads((out / "results.json").read_text())
    (out / "results.md").write_text(markdown(report))
    plot(report["runs"], out / "curves.png")
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()

"""Same-budget accuracy, side by side: the pipeline against a literal port of the seed script.

    python benchmarks/accuracy.py                       # the real CIFAR-10 sample in ../shared/data
    python benchmarks/accuracy.py --archive PATH        # any CIFAR-10 binary archive
    python benchmarks/accuracy.py --ablations           # also the one-difference-at-a-time runs
    python benchmarks/accuracy.py --quick --archive PATH --out DIR   # minutes; what the tests run

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
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cifar_pipeline.archive import read_archive  # noqa: E402
from cifar_pipeline.datasets import CIFAR10  # noqa: E402
from cifar_pipeline.hardware import cpu_flags, cpuinfo_value  # noqa: E402
from cifar_pipeline.normalize import normalize_dataset  # noqa: E402
from cifar_pipeline.outputs import save_arrays, write_json  # noqa: E402
from cifar_pipeline.split import train_val_split  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "cifar-10-sample-binary.tar.gz"
SPLIT_SEED = 42  # params.yaml's split.seed: every contender sees the same images
VAL_FRACTION = 0.1

STEP_SCHEDULE = ["train.lr_schedule.kind=step", "train.lr_schedule.warmup_fraction=0"]

# The README's fast recipe, as `dvc exp run -S` arguments; a test keeps the README in step.
# Chosen on validation accuracy (screening.md); params only: the same layers and weights.
FAST_RECIPE: list[str] = [
    "train.optimizer=sgd",
    "train.learning_rate=0.05",
    "train.weight_decay=0.0005",
    "train.model.dropouts=[0.1,0.15,0.2,0.15]",
]

CONTENDERS: dict[str, dict] = {
    "seed port (literal)": {"contender": "seed_port"},
    "pipeline defaults": {"contender": "pipeline", "against": "seed port (literal)"},
    "fast recipe": {"contender": "pipeline", "overrides": FAST_RECIPE, "against": "pipeline defaults"},
}

# One difference at a time, each against its neighbour in the table (see results.md).
ABLATIONS: dict[str, dict] = {
    # The seed with its normalisation bug fixed: everything else (ImageDataGenerator, one-hot
    # labels, Sequential, float32, constant 0.005) stays the seed's.
    "seed port, all 3 channels normalised": {
        "contender": "seed_port",
        "port": {"normalize_channels": 3},
        "against": "seed port (literal)",
    },
    "seed port, pipeline's tf.data augmentation": {
        "contender": "seed_port",
        "port": {"augment": "pipeline"},
        "against": "seed port (literal)",
    },
    # The pipeline's defaults before issue 7: step boundaries at epochs 50/100/150, which a
    # 15-epoch run never reaches, so the rate stays 0.005 as in the seed.
    "pipeline, previous defaults (step schedule)": {
        "contender": "pipeline",
        "overrides": STEP_SCHEDULE,
        "against": "seed port, all 3 channels normalised",
    },
    "pipeline, previous defaults, float32": {
        "contender": "pipeline",
        "overrides": [*STEP_SCHEDULE, "train.mixed_precision=false"],
        "against": "pipeline, previous defaults (step schedule)",
    },
    "pipeline defaults without warm-up": {
        "contender": "pipeline",
        "overrides": ["train.lr_schedule.warmup_fraction=0"],
        "against": "pipeline defaults",
    },
}


def machine() -> dict:
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags()]
    return {
        "cpu": cpuinfo_value(("model name",)) or platform.processor(),
        "simd": simd,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }


def prepare(archive: Path, out: Path, max_train: int | None, max_test: int | None) -> dict:
    """The split and normalize stages' outputs for `archive`, in one folder the runs share."""
    out.mkdir(parents=True)
    raw = read_archive(archive, CIFAR10)
    labels = raw.train_labels["label"]
    train_idx, val_idx = train_val_split(labels, VAL_FRACTION, SPLIT_SEED, max_train)
    test_idx = slice(None) if max_test is None else slice(0, max_test)
    save_arrays(
        out,
        train_images=raw.train_images[train_idx],
        train_labels=labels[train_idx],
        val_images=raw.train_images[val_idx],
        val_labels=labels[val_idx],
        test_images=raw.test_images[test_idx],
        test_labels=raw.test_labels["label"][test_idx],
    )
    write_json(out / "classes.json", {"label_mode": "label", "names": raw.class_names["label"]})
    normalize_dataset(out, out / "stats.json")
    return {"train": len(train_idx), "val": len(val_idx), "test": len(raw.test_labels["label"][test_idx])}


def run_one(name: str, config: dict, log) -> dict:
    command = [sys.executable, str(ROOT / "benchmarks/accuracy_run.py"), json.dumps(config)]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    log.write(f"===== {name} seed {config['seed']}\n{out.stdout}\n{out.stderr}\n")
    log.flush()
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{name} (seed {config['seed']}) failed:\n{out.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: list[dict]) -> dict:
    summary = {"seeds": [r["config"]["seed"] for r in runs], "dtype_policy": runs[0]["dtype_policy"]}
    for key in ("test_accuracy", "test_top5_accuracy", "test_loss", "final_val_accuracy", "final_train_accuracy"):
        summary[key] = mean_std([r[key] for r in runs])
    summary["wall_s"] = mean_std([r["wall_s"] for r in runs])
    summary["per_seed_test_accuracy"] = [r["test_accuracy"] for r in runs]
    return summary


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, runs in results.items():
        for ax, key in zip(axes, ("accuracy", "val_accuracy"), strict=True):
            curves = [r["history"][key] for r in runs]
            mean = [statistics.fmean(values) for values in zip(*curves, strict=True)]
            ax.plot(range(1, len(mean) + 1), mean, marker=".", label=name)
    for ax, title in zip(axes, ("training accuracy (augmented batches)", "validation accuracy"), strict=True):
        ax.set_title(f"{title}, mean over seeds")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Same-budget accuracy: the pipeline against the seed script",
        "",
        f"Data: `{report['archive']}` ({report['images']['train']} train / {report['images']['val']} validation "
        f"images from one seeded split, {report['images']['test']} test images), {report['epochs']} epochs, "
        f"seeds {report['seeds']}. Machine: {m['cpu']}, {m['cores']} cores, {' '.join(m['simd'])}. "
        f"Whole run: {report['total_s'] / 60:.1f} min.",
        "",
        "Test numbers are reported once per run; every choice was made on validation accuracy.",
        "",
        "| contender | test accuracy | test top-5 | val accuracy (last epoch) | train accuracy (last epoch) "
        "| wall per run | precision | per-seed test accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in report["summary"].items():
        seeds = ", ".join(f"{a:.3f}" for a in s["per_seed_test_accuracy"])
        lines.append(
            f"| {name} | **{s['test_accuracy'][0]:.3f} ± {s['test_accuracy'][1]:.3f}** "
            f"| {s['test_top5_accuracy'][0]:.3f} ± {s['test_top5_accuracy'][1]:.3f} "
            f"| {s['final_val_accuracy'][0]:.3f} ± {s['final_val_accuracy'][1]:.3f} "
            f"| {s['final_train_accuracy'][0]:.3f} ± {s['final_train_accuracy'][1]:.3f} "
            f"| {s['wall_s'][0]:.0f} s | {s['dtype_policy']} | {seeds} |"
        )
    lines += ["", "Mean ± sample standard deviation over seeds. Curves: `curves.png`.", ""]
    known = CONTENDERS | ABLATIONS
    pairs = [(name, known[name]["against"]) for name in report["summary"] if known.get(name, {}).get("against")]
    pairs = [(name, base) for name, base in pairs if base in report["summary"]]
    if pairs:
        lines += [
            "## One difference at a time",
            "",
            "| contender | against | test accuracy difference | val accuracy difference |",
            "|---|---|---|---|",
        ]
        for name, base in pairs:
            a, b = report["summary"][name], report["summary"][base]
            lines.append(
                f"| {name} | {base} | {a['test_accuracy'][0] - b['test_accuracy'][0]:+.3f} "
                f"| {a['final_val_accuracy'][0] - b['final_val_accuracy'][0]:+.3f} |"
            )
        lines.append("")
    lines += ["## Contenders", ""]
    for name, config in report["contenders"].items():
        lines.append(f"- **{name}**: `{json.dumps(config)}`")
    lines.append("")
    return "\n".join(lines)


def write_screening(path: Path, results: dict[str, list[dict]], images: dict, epochs: int, seeds: list[int]) -> None:
    """Append one table of validation numbers: the record of how a recipe was chosen."""
    m = machine()
    lines = [
        f"\n### Screening, {time.strftime('%Y-%m-%d %H:%M')}: {images['train']} train / {images['val']} validation "
        f"images, {epochs} epochs, seeds {seeds}, {m['cpu']} {' '.join(m['simd'])}\n",
        "| recipe (overrides of params.yaml) | val accuracy, last epoch | best val accuracy (epoch) | train accuracy "
        "| wall |",
        "|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        last = mean_std([r["history"]["val_accuracy"][-1] for r in runs])
        best = [max(r["history"]["val_accuracy"]) for r in runs]
        best_epoch = [r["history"]["val_accuracy"].index(b) + 1 for r, b in zip(runs, best, strict=True)]
        train = mean_std([r["history"]["accuracy"][-1] for r in runs])
        wall = statistics.fmean(r["wall_s"] for r in runs)
        lines.append(
            f"| `{name or '(defaults)'}` | {last[0]:.3f} ± {last[1]:.3f} | {statistics.fmean(best):.3f} ({best_epoch}) "
            f"| {train[0]:.3f} | {wall:.0f} s |"
        )
    with path.open("a") as out:
        out.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
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
    args = parser.parse_args()
    if args.render:
        render(args.out)
        return
    if not args.archive.is_file():
        sys.exit(f"error: {args.archive} not found; pass --archive PATH to a CIFAR-10 binary .tar.gz")
    epochs = 1 if args.quick else args.epochs
    seeds = args.seeds or ([1, 2] if args.quick else [1, 2, 3])
    limits = (256, 64) if args.quick else (None, None)
    chosen = CONTENDERS | (ABLATIONS if args.ablations else {})
    if args.screen:
        chosen = {
            recipe: {"contender": "pipeline", "overrides": recipe.split(), "validation_only": True}
            for recipe in args.screen
        }
    if args.only:
        everything = CONTENDERS | ABLATIONS
        unknown = [name for name in args.only if name not in everything]
        if unknown:
            sys.exit(f"error: unknown contender {unknown}; choose from {list(everything)}")
        chosen = {name: everything[name] for name in args.only}
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp, open(args.out / "runs.log", "w") as log:
        data = Path(tmp) / "split"
        images = prepare(args.archive, data, *limits)
        for name, contender in chosen.items():
            for seed in seeds:
                print(f"{name}, seed {seed} ...", flush=True)
                result = run_one(name, {**contender, "data": str(data), "seed": seed, "epochs": epochs}, log)
                score = "val accuracy {final_val_accuracy:.3f}" if args.screen else "test accuracy {test_accuracy:.3f}"
                print(f"  {score.format(**result)}, {result['wall_s']:.0f} s", flush=True)
                results.setdefault(name, []).append(result)
    if args.screen:
        write_screening(args.out / "screening.md", results, images, epochs, seeds)
        return
    report = {
        "archive": args.archive.name,
        "images": images,
        "epochs": epochs,
        "seeds": seeds,
        "machine": machine(),
        "contenders": chosen,
        "total_s": time.perf_counter() - start,
        "summary": {name: summarise(runs) for name, runs in results.items()},
        "runs": results,
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    render(args.out)


def render(out: Path) -> None:
    report = json.loads((out / "results.json").read_text())
    (out / "results.md").write_text(markdown(report))
    plot(report["runs"], out / "curves.png")
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()

"""Full-scale accuracy: every contender on a whole dev archive, one dataset at a time.

    python -m benchmarks.full_scale --dataset cifar10                 # ../shared/data's dev archive
    python -m benchmarks.full_scale --dataset cifar100                # unpacks ../shared's CIFAR-100 once
    python -m benchmarks.full_scale --dataset cifar10 --only fast --seeds 1
    python -m benchmarks.full_scale --render                          # only rewrite results.md

The fast recipe trains for its own epochs with several seeds; the seed recipe (the seed's
network and recipe, bugs fixed) and the literal seed port then get the same wall-clock
budget: the fast runs' mean training time on this machine, stopped after the last epoch
that fits. All train on the same images (the split stage's own seeded 90/10 split) and are
scored once on the archive's test images; nothing is chosen on them.

Every finished run is its own JSON file under --out/<dataset>/runs/, written as soon as it
ends: an interrupted benchmark loses only the run in progress, and a rerun skips every run
whose file holds the same resolved training values. results.md is rewritten after each run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, machine
from benchmarks.full_scale_report import compact, markdown
from benchmarks.runs import run_one, write_split_folder
from cifar_pipeline.core.datasets import SPECS

SHARED = ROOT.parent / "shared" / "data"
ARCHIVES = {
    "cifar10": SHARED / "cifar-10-dev-binary.tar.gz",
    "cifar100": Path.home() / ".cache" / "cifar-pipeline" / "cifar-100-dev-binary.tar.gz",
}
# Each results folder: its dataset and label set (coarse CIFAR-100 is measured once, for the default).
FOLDERS = {"cifar10": ("cifar10", "label"), "cifar100": ("cifar100", "fine"), "cifar100-coarse": ("cifar100", "coarse")}

FAST, SEED, PORT, WHOLE = "fast", "seed", "seed-port", "airbench94"
CONTENDERS: dict[str, dict] = {
    WHOLE: {
        "contender": "pipeline",
        "overrides": [f"recipe={WHOLE}"],
        "title": "airbench94 recipe (its own epochs)",
        "short": "**airbench94 recipe** (CIFAR-10's default; CIFAR-100's before issue 42), 10 epochs",
    },
    FAST: {
        "contender": "pipeline",
        "overrides": ["recipe=fast"],
        "title": "fast recipe (its own epochs)",
        "short": "fast recipe (the default before issue 30), 10 epochs",
    },
    SEED: {
        "contender": "pipeline",
        "overrides": ["recipe=seed"],
        "budget": True,
        "title": "seed recipe (the seed's network, bugs fixed), same wall-clock budget",
        "short": "seed recipe (the default before issue 29), the fast recipe's training time",
    },
    PORT: {
        "contender": "seed_port",
        "epochs": 200,
        "budget": True,
        "title": "seed script, literal port, same wall-clock budget",
        "short": "seed script, literal port, the fast recipe's training time",
    },
}


def resolved(contender: dict, seed: int) -> dict | None:
    """The training values a pipeline contender resolves to (what identifies its run)."""
    if contender["contender"] != "pipeline":
        return None
    from benchmarks.recipes import train_settings
    from cifar_pipeline.core.params import flatten

    return comparable(flatten(train_settings([*contender["overrides"], f"train.seed={seed}"])))


def comparable(values: dict) -> dict:
    # Run settings that do not change what is learned on one CPU process.
    return {k: v for k, v in values.items() if k not in {"recipe", "jit_compile", "distribute"}}


RUNS, SCREENING = "runs", "screening"


def runs_dir(out: Path, dataset: str, kind: str = RUNS) -> Path:
    return out / dataset / kind


def load_runs(out: Path, dataset: str, kind: str = RUNS) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    found = [json.loads(path.read_text()) for path in runs_dir(out, dataset, kind).glob("*.json")]
    for run in sorted(found, key=lambda r: (r.get("finished", ""), r["config"]["seed"])):
        runs.setdefault(run["name"], []).append(run)
    return runs


def budget_s(runs: dict[str, list[dict]]) -> float | None:
    """The fast recipe's mean training wall time (its epochs, validation included)."""
    fast = runs.get(FAST)
    return statistics.fmean(sum(r["epoch_seconds"]) for r in fast) if fast else None


def ensure_archive(dataset: str, archive: Path) -> None:
    if archive.is_file():
        return
    if dataset == "cifar100" and (SHARED / "cifar100_dev.py").is_file():
        archive.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(SHARED / "cifar100_dev.py"), str(archive.parent)], check=True)
        return
    sys.exit(f"error: {archive} not found; pass --archive PATH to a {dataset} binary .tar.gz")


def slug(name: str, seed: int) -> str:
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if len(text) > 80:  # a long list of overrides: a readable start and a digest of the whole
        text = f"{text[:60]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return f"{text}-seed{seed}.json"


def chosen(args: argparse.Namespace) -> list[tuple[str, dict, str]]:
    """(name, contender, results kind) for each contender this invocation runs."""
    if args.screen:
        return [
            (
                recipe,
                {
                    "contender": "pipeline",
                    "overrides": [*CONTENDERS[FAST]["overrides"], *recipe.split()],
                    "validation_only": True,
                    "title": recipe,
                },
                SCREENING,
            )
            for recipe in args.screen
        ]
    picked = []
    for name in args.only:
        contender = CONTENDERS[name]
        if args.epochs and not contender.get("budget"):
            contender = contender | {"overrides": [*contender["overrides"], f"train.epochs={args.epochs}"]}
        picked.append((name, contender, RUNS))
    return picked


def results_markdown(out: Path) -> str:
    """results.md from every finished run under `out`; each folder's screened recipes after the
    recipe they change (the fast recipe's seed-1 run), their baseline row."""
    results = {}
    for folder in FOLDERS:
        runs, screened = load_runs(out, folder), load_runs(out, folder, SCREENING)
        if screened and runs.get(FAST):
            baseline = [r for r in runs[FAST] if r["config"]["seed"] == 1]
            screened = {
                name: group
                for name, group in ({"(none: the fast recipe, seed 1)": baseline} | screened).items()
                if group
            }
        results[folder] = (runs, screened)
    return markdown(results, CONTENDERS)


def summary_markdown(out: Path) -> str:
    """summary.md: the short tables the README and docs/accuracy.md copy."""
    return compact({folder: load_runs(out, folder) for folder in FOLDERS}, CONTENDERS)


def render(out: Path) -> None:
    (out / "results.md").write_text(results_markdown(out))
    (out / "summary.md").write_text(summary_markdown(out))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=list(FOLDERS), default="cifar10", help="cifar100: fine labels")
    parser.add_argument("--archive", type=Path, help="the dataset's binary .tar.gz (default: the dev archive)")
    parser.add_argument("--only", nargs="+", choices=list(CONTENDERS), default=[FAST, SEED, PORT])
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="seeds for every contender in --only (default: fast 1 2 3, the others 1)"
    )
    parser.add_argument("--max-train", type=int, help="a stratified subsample, for smoke runs only")
    parser.add_argument("--max-test", type=int, help="the first N test images, for smoke runs only")
    parser.add_argument("--epochs", type=int, help="the fast recipe's epochs instead of its own (smoke runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/full_scale")
    parser.add_argument("--render", action="store_true", help="only rewrite results.md from --out")
    parser.add_argument(
        "--screen",
        nargs="+",
        metavar="RECIPE",
        help="choose recipes on validation only (test images never read): each RECIPE is a space-separated list "
        "of dvc-style key=value overrides of the fast recipe (seed 1 unless --seeds); kept under <dataset>/screening/",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render:
        render(args.out)
        return
    dataset, label_mode = FOLDERS[args.dataset]
    archive = args.archive or ARCHIVES[dataset]
    ensure_archive(dataset, archive)
    (args.out / args.dataset).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, open(args.out / args.dataset / "runs.log", "a") as log:
        split = SharedSplit(Path(tmp) / "split", archive, dataset, label_mode, args.max_train, args.max_test)
        for name, contender, kind in chosen(args):
            folder = runs_dir(args.out, args.dataset, kind)
            folder.mkdir(parents=True, exist_ok=True)
            for seed in args.seeds or ([1, 2, 3] if name in (FAST, WHOLE) else [1]):
                path = folder / slug(name, seed)
                if not already_done(path, contender, seed, f"{args.dataset} {name} seed {seed}"):
                    run_contender(args, name, contender, seed, split, log, path)
                    render(args.out)


@dataclasses.dataclass
class SharedSplit:
    """The split every run of one invocation shares, prepared on first use."""

    folder: Path
    archive: Path
    dataset: str
    label_mode: str
    max_train: int | None
    max_test: int | None
    images: dict | None = None

    def prepared(self) -> dict:
        if self.images is None:
            spec = SPECS[self.dataset]
            self.images = write_split_folder(
                self.archive, self.folder, self.max_train, self.max_test, spec, self.label_mode
            )
        return self.images


def already_done(path: Path, contender: dict, seed: int, what: str) -> bool:
    """Whether `path` holds a run with the same resolved training values (a changed recipe trains again)."""
    if not path.is_file():
        return False
    done = json.loads(path.read_text())
    values = resolved(contender, seed)
    if values is None or comparable(done.get("train_params", {})) == values:
        print(f"{what}: done ({path.name})", flush=True)
        return True
    print(f"{what}: the recipe changed; training again", flush=True)
    return False


def run_contender(
    args: argparse.Namespace, name: str, contender: dict, seed: int, split: SharedSplit, log, path: Path
) -> None:
    """One run, written to `path` as soon as it ends."""
    images = split.prepared()
    config = {k: v for k, v in contender.items() if k not in {"title", "budget"}}
    config |= {"data": str(split.folder), "seed": seed}
    if contender.get("budget"):
        config["budget_s"] = budget_s(load_runs(args.out, args.dataset))
        if not config["budget_s"]:
            sys.exit(f"error: {name} needs the fast recipe's time first; run --only {FAST}")
    print(f"{args.dataset} {name} seed {seed} ...", flush=True)
    start = time.time()
    result = run_one(f"{args.dataset} {name}", config, log)
    result |= {
        "name": name,
        "archive": split.archive.name,
        "label_mode": split.label_mode,
        "images": images,
        "machine": machine(),
        "finished": time.strftime("%Y-%m-%d %H:%M"),
    }
    path.write_text(json.dumps(result, indent=1))
    validation_only = contender.get("validation_only")
    score = "val accuracy" if validation_only else "test accuracy"
    value = result["final_val_accuracy"] if validation_only else result["test_accuracy"]
    minutes = (time.time() - start) / 60
    print(f"  {score} {value:.4f}, {len(result['epoch_seconds'])} epochs, {minutes:.1f} min", flush=True)


if __name__ == "__main__":
    main()

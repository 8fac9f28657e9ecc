"""Full-scale accuracy: every contender on a whole dev archive, one dataset at a time.

    python benchmarks/full_scale.py --dataset cifar10                 # ../shared/data's dev archive
    python benchmarks/full_scale.py --dataset cifar100                # unpacks ../shared's CIFAR-100 once
    python benchmarks/full_scale.py --dataset cifar10 --only fast --seeds 1
    python benchmarks/full_scale.py --render                          # only rewrite results.md

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
import hashlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from accuracy import (  # noqa: E402
    SCREENING_HEADER,
    machine,
    mean_std,
    prepare,
    run_one,
    screening_rows,
    time_to,
    time_to_cell,
)

from cifar_pipeline.core.datasets import SPECS  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
ARCHIVES = {
    "cifar10": SHARED / "cifar-10-dev-binary.tar.gz",
    "cifar100": Path.home() / ".cache" / "cifar-pipeline" / "cifar-100-dev-binary.tar.gz",
}
# Each results folder: its dataset and label set (coarse CIFAR-100 is measured once, for the default).
TARGETS = {"cifar10": ("cifar10", "label"), "cifar100": ("cifar100", "fine"), "cifar100-coarse": ("cifar100", "coarse")}
# Validation accuracies whose first crossing the time-to-accuracy table reports, per label set.
THRESHOLDS = {"label": (0.85, 0.90, 0.93, 0.94), "fine": (0.50, 0.60, 0.65, 0.70), "coarse": (0.70, 0.75, 0.80, 0.85)}
# Published test accuracy of the seed script after 200 GPU epochs (its own logs).
SEED_REPORTED = {"cifar10": "0.9029", "cifar100": "0.5744", "cifar100-coarse": "none"}

FAST, SEED, PORT, WHOLE = "fast", "seed", "seed-port", "airbench94"
CONTENDERS: dict[str, dict] = {
    WHOLE: {
        "contender": "pipeline",
        "overrides": [f"recipe={WHOLE}"],
        "title": "airbench94 recipe (its own epochs)",
        "short": "**airbench94 recipe** (the default), 10 epochs",
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
    from recipes import train_settings

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


def summarise(runs: list[dict], thresholds: tuple[float, ...]) -> dict:
    summary = {
        "seeds": [r["config"]["seed"] for r in runs],
        "epochs": [len(r["epoch_seconds"]) for r in runs],
        "train_min": mean_std([sum(r["epoch_seconds"]) / 60 for r in runs]),
        "cpu_min": mean_std([sum(r.get("epoch_cpu_seconds") or [0]) / 60 for r in runs]),
        "wall_min": mean_std([r["wall_s"] / 60 for r in runs]),
        "dtype_policy": runs[0]["dtype_policy"],
    }
    for key in ("test_accuracy", "test_top5_accuracy", "final_val_accuracy"):
        summary[key] = mean_std([r[key] for r in runs])
    summary["per_seed_test_accuracy"] = [r["test_accuracy"] for r in runs]
    summary["time_to"] = {str(t): time_to(runs, t) for t in thresholds}
    curves = [r["history"]["val_accuracy"] for r in runs]
    summary["val_curve"] = [statistics.fmean(v) for v in zip(*curves, strict=False)] if len(runs) > 1 else curves[0]
    return summary


def markdown(out: Path) -> str:
    lines = [
        "# Full-scale accuracy: the recipes on whole dev archives",
        "",
        "Written by `benchmarks/full_scale.py` after every finished run. Each dataset's dev archive "
        "(`../shared/data`, real training images only) is split by the split stage's own code "
        "(val_fraction 0.1, seed 42): 40,500 train / 4,500 validation / 5,000 test images. "
        "Recipes were chosen on validation accuracy; each run's test images were scored once, "
        "by the exported model (with its test-time views).",
        "",
        "*train min* is the training wall time (all epochs, validation passes included); *CPU min* the "
        "process's CPU time over the same epochs (on a quiet 2-core machine about twice the wall "
        "time; less than that means the run shared the machine). *Same budget*: trained until "
        "the next epoch would pass the fast recipe's mean training wall time on this machine.",
        "",
    ]
    for target in TARGETS:
        runs = load_runs(out, target)
        if not runs:
            continue
        first = next(iter(runs.values()))[0]
        m = first["machine"]
        lines += [
            f"## {target}",
            "",
            f"Archive `{first['archive']}`: {first['images']['train']:,} train / "
            f"{first['images']['val']:,} validation / {first['images']['test']:,} test images. "
            f"Machine: {m['cpu']}, {m['cores']} cores, {' '.join(m['simd'])}. "
            f"The seed script's reported test accuracy after 200 GPU epochs: {SEED_REPORTED[target]}.",
            "",
            "| contender | test accuracy | test top-5 | val accuracy (last) | epochs | train min | CPU min "
            "| whole run min | precision | per-seed test accuracy (seeds) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        thresholds = THRESHOLDS[first["label_mode"]]
        summaries = {name: summarise(group, thresholds) for name, group in runs.items() if name in CONTENDERS}
        for name, s in summaries.items():
            per_seed = ", ".join(f"{a:.4f}" for a in s["per_seed_test_accuracy"])
            lines.append(
                f"| {CONTENDERS[name]['title']} | **{s['test_accuracy'][0]:.4f} ± {s['test_accuracy'][1]:.4f}** "
                f"| {s['test_top5_accuracy'][0]:.4f} | {s['final_val_accuracy'][0]:.4f} "
                f"| {', '.join(map(str, s['epochs']))} | {s['train_min'][0]:.1f} | {s['cpu_min'][0]:.1f} "
                f"| {s['wall_min'][0]:.1f} | {s['dtype_policy']} | {per_seed} ({', '.join(map(str, s['seeds']))}) |"
            )
        lines += [
            "",
            "Mean ± sample standard deviation over seeds (± 0 with one seed).",
            "",
            "### Time to validation accuracy",
            "",
            "The first epoch whose validation accuracy reaches each level, and the training wall minutes up to "
            "its end, mean over the seeds that reached it (n/N).",
            "",
            "| contender | " + " | ".join(f"val ≥ {t}" for t in thresholds) + " |",
            "|---|" + "---|" * len(thresholds),
        ]
        screened = load_runs(out, target, SCREENING)
        if screened and runs.get(FAST):  # the recipe every screened one changes, as the first row
            screened = {
                "(none: the fast recipe, seed 1)": [r for r in runs[FAST] if r["config"]["seed"] == 1]
            } | screened
            screened = {name: group for name, group in screened.items() if group}
        for title, group in [(CONTENDERS[n]["title"], r) for n, r in runs.items() if n in CONTENDERS] + [
            (f"screening: `{n}`", r) for n, r in screened.items()
        ]:
            lines.append(f"| {title} | " + " | ".join(time_to_cell(time_to(group, t)) for t in thresholds) + " |")
        lines += ["", "### Validation accuracy by epoch (mean over seeds)", ""]
        for name, s in summaries.items():
            lines.append(f"- {CONTENDERS[name]['title']}: " + ", ".join(f"{v:.3f}" for v in s["val_curve"]))
        for name, group in screened.items():
            curve = [statistics.fmean(v) for v in zip(*(r["history"]["val_accuracy"] for r in group), strict=False)]
            lines.append(f"- screening `{name}`: " + ", ".join(f"{v:.3f}" for v in curve))
        if screened:
            lines += [
                "",
                "### Screening (validation only; the test images are not read)",
                "",
                "Each recipe is the fast recipe with the overrides shown; chosen on these numbers alone.",
                "",
                *SCREENING_HEADER,
                *screening_rows(screened),
            ]
        lines.append("")
    return "\n".join(lines)


def compact(out: Path) -> str:
    """The short tables the README and docs/accuracy.md show (copied from summary.md, which
    `--render` writes; a test keeps the copies equal to it)."""

    def number(x: float) -> str:
        return f"{x:.1f}".removesuffix(".0")

    def spread(values: list[float], bold: bool = False) -> str:
        mean, std = mean_std(values)
        text = f"{mean:.3f}" + (f" ± {std:.3f}" if len(values) > 1 else "")
        return f"**{text}**" if bold else text

    tables = []
    for target in TARGETS:
        runs = {n: r for n, r in load_runs(out, target).items() if n in CONTENDERS}
        if not runs:
            continue
        thresholds = THRESHOLDS[next(iter(runs.values()))[0]["label_mode"]]
        lines = [
            f"| {target} | seeds | test accuracy | top-5 | epochs | training min | "
            + " | ".join(f"val ≥ {t}: epoch / min" for t in thresholds)
            + " |",
            "|---|---|---|---|---|---|" + "---|" * len(thresholds),
        ]
        for name in CONTENDERS:
            if name not in runs:
                continue
            group = runs[name]
            cells = []
            for t in thresholds:
                hit = time_to(group, t)
                partial = "" if hit["reached"] == hit["of"] else f" ({hit['reached']}/{hit['of']})"
                cells.append(f"{number(hit['epochs'])} / {hit['seconds'] / 60:.1f}{partial}" if hit["reached"] else "–")
            lines.append(
                f"| {CONTENDERS[name]['short']} | {', '.join(str(r['config']['seed']) for r in group)} "
                f"| {spread([r['test_accuracy'] for r in group], bold=True)} "
                f"| {spread([r['test_top5_accuracy'] for r in group])} "
                f"| {', '.join(str(len(r['epoch_seconds'])) for r in group)} "
                f"| {statistics.fmean(sum(r['epoch_seconds']) for r in group) / 60:.1f} | " + " | ".join(cells) + " |"
            )
        tables.append("\n".join(lines))
    return "\n\n".join(tables) + "\n"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=list(TARGETS), default="cifar10", help="cifar100: fine labels")
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
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render:
        (args.out / "results.md").write_text(markdown(args.out))
        (args.out / "summary.md").write_text(compact(args.out))
        return
    dataset, label_mode = TARGETS[args.dataset]
    archive = args.archive or ARCHIVES[dataset]
    ensure_archive(dataset, archive)
    (args.out / args.dataset).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, open(args.out / args.dataset / "runs.log", "a") as log:
        data = Path(tmp) / "split"
        images = None
        for name, contender, kind in chosen(args):
            folder = runs_dir(args.out, args.dataset, kind)
            folder.mkdir(parents=True, exist_ok=True)
            for seed in args.seeds or ([1, 2, 3] if name in (FAST, WHOLE) else [1]):
                path = folder / slug(name, seed)
                values = resolved(contender, seed)
                if path.is_file():
                    done = json.loads(path.read_text())
                    if values is None or comparable(done.get("train_params", {})) == values:
                        print(f"{args.dataset} {name} seed {seed}: done ({path.name})", flush=True)
                        continue
                    print(f"{args.dataset} {name} seed {seed}: the recipe changed; training again", flush=True)
                if images is None:
                    images = prepare(archive, data, args.max_train, args.max_test, SPECS[dataset], label_mode)
                config = {k: v for k, v in contender.items() if k not in {"title", "budget"}}
                config |= {"data": str(data), "seed": seed}
                if contender.get("budget"):
                    config["budget_s"] = budget_s(load_runs(args.out, args.dataset))
                    if not config["budget_s"]:
                        sys.exit(f"error: {name} needs the fast recipe's time first; run --only {FAST}")
                print(f"{args.dataset} {name} seed {seed} ...", flush=True)
                start = time.time()
                result = run_one(f"{args.dataset} {name}", config, log)
                result |= {
                    "name": name,
                    "archive": archive.name,
                    "label_mode": label_mode,
                    "images": images,
                    "machine": machine(),
                    "finished": time.strftime("%Y-%m-%d %H:%M"),
                }
                path.write_text(json.dumps(result, indent=1))
                score = (
                    f"test accuracy {result['test_accuracy']:.4f}"
                    if kind == RUNS
                    else (f"val accuracy {result['final_val_accuracy']:.4f}")
                )
                print(
                    f"  {score}, {len(result['epoch_seconds'])} epochs, {(time.time() - start) / 60:.1f} min",
                    flush=True,
                )
                (args.out / "results.md").write_text(markdown(args.out))
                (args.out / "summary.md").write_text(compact(args.out))


if __name__ == "__main__":
    main()

"""The full-scale benchmark's report: finished runs in, Markdown out (results.md, and
summary.md, the short tables the README and docs/accuracy.md copy)."""

from __future__ import annotations

import statistics

from benchmarks.runs import SCREENING_HEADER, mean_std, screening_rows, time_to, time_to_cell

# Validation accuracies whose first crossing the time-to-accuracy table reports, per label set.
THRESHOLDS = {"label": (0.85, 0.90, 0.93, 0.94), "fine": (0.50, 0.60, 0.65, 0.70), "coarse": (0.70, 0.75, 0.80, 0.85)}
# Published test accuracy of the seed script after 200 GPU epochs (its own logs).
SEED_REPORTED = {"cifar10": "0.9029", "cifar100": "0.5744", "cifar100-coarse": "none"}

Runs = dict[str, list[dict]]  # contender (or screened recipe) name -> its runs, one per seed


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


def markdown(results: dict[str, tuple[Runs, Runs]], contenders: dict[str, dict]) -> str:
    """results.md: per results folder (cifar10, cifar100, ...), its (runs, screened runs); the
    screened runs' first entry is the recipe they change, as their baseline row."""
    lines = [
        "# Full-scale accuracy: the recipes on whole dev archives",
        "",
        "Written by `python -m benchmarks.full_scale` after every finished run. Each dataset's dev archive "
        "(`../shared/data`, real training images only) is split by the split stage's own code, with "
        "params.yaml's `split` values (each section says how many images each part holds). "
        "Recipes were chosen on validation accuracy; each run's test images were scored once, "
        "by the exported model (with its test-time views).",
        "",
        "*train min* is the training wall time (all epochs, validation passes included); *CPU min* the "
        "process's CPU time over the same epochs (on a quiet 2-core machine about twice the wall "
        "time; less than that means the run shared the machine). *Same budget*: trained until "
        "the next epoch would pass the fast recipe's mean training wall time on this machine.",
        "",
    ]
    for target, (runs, screened) in results.items():
        if runs:
            lines += section(target, runs, screened, contenders)
    return "\n".join(lines)


def section(target: str, runs: Runs, screened: Runs, contenders: dict[str, dict]) -> list[str]:
    first = next(iter(runs.values()))[0]
    m = first["machine"]
    thresholds = THRESHOLDS[first["label_mode"]]
    summaries = {name: summarise(group, thresholds) for name, group in runs.items() if name in contenders}
    lines = [
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
    for name, s in summaries.items():
        per_seed = ", ".join(f"{a:.4f}" for a in s["per_seed_test_accuracy"])
        lines.append(
            f"| {contenders[name]['title']} | **{s['test_accuracy'][0]:.4f} ± {s['test_accuracy'][1]:.4f}** "
            f"| {s['test_top5_accuracy'][0]:.4f} | {s['final_val_accuracy'][0]:.4f} "
            f"| {', '.join(map(str, s['epochs']))} | {s['train_min'][0]:.1f} | {s['cpu_min'][0]:.1f} "
            f"| {s['wall_min'][0]:.1f} | {s['dtype_policy']} | {per_seed} ({', '.join(map(str, s['seeds']))}) |"
        )
    lines += ["", "Mean ± sample standard deviation over seeds (± 0 with one seed).", ""]
    titled = [(contenders[n]["title"], r) for n, r in runs.items() if n in contenders]
    lines += time_to_section(titled + [(f"screening: `{n}`", r) for n, r in screened.items()], thresholds)
    lines += ["", "### Validation accuracy by epoch (mean over seeds)", ""]
    for name, s in summaries.items():
        lines.append(f"- {contenders[name]['title']}: " + ", ".join(f"{v:.3f}" for v in s["val_curve"]))
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
    return [*lines, ""]


def time_to_section(groups: list[tuple[str, list[dict]]], thresholds: tuple[float, ...]) -> list[str]:
    lines = [
        "### Time to validation accuracy",
        "",
        "The first epoch whose validation accuracy reaches each level, and the training wall minutes up to "
        "its end, mean over the seeds that reached it (n/N).",
        "",
        "| contender | " + " | ".join(f"val ≥ {t}" for t in thresholds) + " |",
        "|---|" + "---|" * len(thresholds),
    ]
    for title, group in groups:
        lines.append(f"| {title} | " + " | ".join(time_to_cell(time_to(group, t)) for t in thresholds) + " |")
    return lines


def compact(results: dict[str, Runs], contenders: dict[str, dict]) -> str:
    """The short tables the README and docs/accuracy.md show (copied from summary.md, which
    `--render` writes; a test keeps the copies equal to it)."""

    def number(x: float) -> str:
        return f"{x:.1f}".removesuffix(".0")

    def spread(values: list[float], bold: bool = False) -> str:
        mean, std = mean_std(values)
        text = f"{mean:.3f}" + (f" ± {std:.3f}" if len(values) > 1 else "")
        return f"**{text}**" if bold else text

    tables = []
    for target, every in results.items():
        runs = {n: r for n, r in every.items() if n in contenders}
        if not runs:
            continue
        thresholds = THRESHOLDS[next(iter(runs.values()))[0]["label_mode"]]
        lines = [
            f"| {target} | seeds | test accuracy | top-5 | epochs | training min | "
            + " | ".join(f"val ≥ {t}: epoch / min" for t in thresholds)
            + " |",
            "|---|---|---|---|---|---|" + "---|" * len(thresholds),
        ]
        for name in contenders:
            if name not in runs:
                continue
            group = runs[name]
            cells = []
            for t in thresholds:
                hit = time_to(group, t)
                partial = "" if hit["reached"] == hit["of"] else f" ({hit['reached']}/{hit['of']})"
                cells.append(f"{number(hit['epochs'])} / {hit['seconds'] / 60:.1f}{partial}" if hit["reached"] else "–")
            lines.append(
                f"| {contenders[name]['short']} | {', '.join(str(r['config']['seed']) for r in group)} "
                f"| {spread([r['test_accuracy'] for r in group], bold=True)} "
                f"| {spread([r['test_top5_accuracy'] for r in group])} "
                f"| {', '.join(str(len(r['epoch_seconds'])) for r in group)} "
                f"| {statistics.fmean(sum(r['epoch_seconds']) for r in group) / 60:.1f} | " + " | ".join(cells) + " |"
            )
        tables.append("\n".join(lines))
    return "\n\n".join(tables) + "\n"

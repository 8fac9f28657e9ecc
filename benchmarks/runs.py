"""Accuracy runs on one shared split, and what is read off their curves: the machinery the
same-budget (accuracy) and full-scale benchmarks share.

Every contender trains on the same images (the split stage's own seeded split, written
through the layout module), each run in its own process (`benchmarks.accuracy_run`).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, result_line, run_module
from cifar_pipeline.core.datasets import CIFAR10, DatasetSpec
from cifar_pipeline.core.layout import Classes, Part, Split, write_split
from cifar_pipeline.core.params import load_params
from cifar_pipeline.data.archive import read_archive
from cifar_pipeline.data.channel_stats import normalize_dataset
from cifar_pipeline.data.split import train_val_split


def write_split_folder(
    archive: Path,
    out: Path,
    max_train: int | None,
    max_test: int | None,
    spec: DatasetSpec = CIFAR10,
    label_mode: str = "label",
) -> dict:
    """The split and normalize stages' outputs for `archive`, in one folder the runs share."""
    out.mkdir(parents=True)
    raw = read_archive(archive, spec)
    labels = raw.train_labels[label_mode]
    split = load_params(ROOT / "params.yaml").split  # the pipeline's split: every contender sees its images
    train_idx, val_idx = train_val_split(labels, split.val_fraction, split.seed, max_train)
    test_labels = raw.test_labels[label_mode]
    test_idx = np.arange(len(test_labels) if max_test is None else min(max_test, len(test_labels)))

    def part(images: np.ndarray, part_labels: np.ndarray, indices: np.ndarray) -> Part:
        return Part(images[indices], part_labels[indices], indices)

    parts = (part(raw.train_images, labels, train_idx), part(raw.train_images, labels, val_idx))
    classes = Classes(raw.class_names[label_mode], label_mode)
    write_split(out, Split(*parts, part(raw.test_images, test_labels, test_idx), classes))
    normalize_dataset(out, out / "stats.json")
    return {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)}


def run_one(name: str, config: dict, log) -> dict:
    out = run_module("accuracy_run", json.dumps(config))
    log.write(f"===== {name} seed {config['seed']}\n{out.stdout}\n{out.stderr}\n")
    log.flush()
    return result_line(out, f"{name} (seed {config['seed']})")


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def first_reached(run: dict, threshold: float) -> tuple[int, float, float] | None:
    """(epoch, training seconds, CPU seconds) at the end of the first epoch whose validation
    accuracy reaches `threshold`; seconds are the epochs' own, validation included (CPU 0
    for runs that did not record it)."""
    wall = cpu = 0.0
    cpus = run.get("epoch_cpu_seconds") or [0.0] * len(run["epoch_seconds"])
    for epoch, (value, spent, used) in enumerate(
        zip(run["history"]["val_accuracy"], run["epoch_seconds"], cpus, strict=True), 1
    ):
        wall, cpu = wall + spent, cpu + used
        if value >= threshold:
            return epoch, wall, cpu
    return None


def time_to(runs: list[dict], threshold: float) -> dict:
    """Mean epochs, seconds and CPU seconds over the seeds that reached `threshold`, and how many did."""
    reached = [hit for hit in (first_reached(r, threshold) for r in runs) if hit]
    if not reached:
        return {"reached": 0, "of": len(runs)}
    return {
        "reached": len(reached),
        "of": len(runs),
        "epochs": statistics.fmean(e for e, _, _ in reached),
        "seconds": statistics.fmean(s for _, s, _ in reached),
        "cpu_seconds": statistics.fmean(c for _, _, c in reached),
    }


def time_to_cell(hit: dict) -> str:
    """One cell of a time-to-accuracy table."""
    if not hit["reached"]:
        return f"no (0/{hit['of']})"
    cpu = f", {hit['cpu_seconds'] / 60:.1f} CPU min" if hit.get("cpu_seconds") else ""
    return f"epoch {hit['epochs']:.1f}, {hit['seconds'] / 60:.1f} min{cpu} ({hit['reached']}/{hit['of']})"


def screening_rows(results: dict[str, list[dict]]) -> list[str]:
    """One table row per recipe (its runs' mean): validation numbers only, as the screening
    tables show them; the full-scale benchmark's screening uses the same rows."""
    lines = []
    for name, runs in results.items():
        last = mean_std([r["history"]["val_accuracy"][-1] for r in runs])
        best = [max(r["history"]["val_accuracy"]) for r in runs]
        best_epoch = [r["history"]["val_accuracy"].index(b) + 1 for r, b in zip(runs, best, strict=True)]
        train = mean_std([r["history"]["accuracy"][-1] for r in runs])
        wall = statistics.fmean(r["wall_s"] for r in runs)
        views = " / ".join(
            f"{statistics.fmean(r[key] for r in runs):.3f}" if key in runs[0] else "-"
            for key in (f"val_accuracy_views_{v}" for v in ("none", "flip", "flip_translate"))
        )
        stale = (
            f"{statistics.fmean(r['val_accuracy_stale_batchnorm'] for r in runs):.3f}"
            if "val_accuracy_stale_batchnorm" in runs[0]
            else "-"
        )
        lines.append(
            f"| `{name or '(defaults)'}` | {last[0]:.3f} ± {last[1]:.3f} | {statistics.fmean(best):.3f} ({best_epoch}) "
            f"| {train[0]:.3f} | {views} | {stale} | {wall:.0f} s |"
        )
    return lines


SCREENING_HEADER = [
    "| recipe (overrides of params.yaml) | val accuracy, last epoch | best val accuracy (epoch) | train accuracy "
    "| exported, views none / flip / flip_translate | EMA, stale BN | wall |",
    "|---|---|---|---|---|---|---|",
]

"""Each format's row of the export table: the evaluate stage's numbers on the same test images,
the file's size, and its latency per image on this machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cifar_pipeline.inference.evaluation import evaluate_probabilities

Predict = Callable[[np.ndarray], np.ndarray]

BATCH = 256  # the throughput batch; batch 1 is the other latency
SINGLE_RUNS = 20  # batch-1 calls timed (after one warm-up); their median is reported
BATCH_RUNS = 5  # batches timed where the table does not score the model itself (the `.keras` row)

ROUNDING = {"test_accuracy": 4, "test_top5_accuracy": 4, "accuracy_change": 4, "size_mb": 2}


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def _median_seconds(predict: Predict, calls: list[np.ndarray]) -> float:
    """The median time of one `predict` call over `calls`, after one untimed call with the first."""
    predict(calls[0])  # warm-up: the first call plans memory and compiles
    times = []
    for images in calls:
        start = time.perf_counter()
        predict(images)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def single_image_ms(predict: Predict, images: np.ndarray) -> float:
    """Median over SINGLE_RUNS calls with one image each."""
    return _median_seconds(predict, [images[index % len(images)][None] for index in range(SINGLE_RUNS)]) * 1e3


def batch_ms(predict: Predict, images: np.ndarray, runs: int = BATCH_RUNS) -> float:
    """Per image: the median time of `runs` calls with BATCH images."""
    batch = images[:BATCH]
    return _median_seconds(predict, [batch] * runs) / len(batch) * 1e3


def scored_row(predict: Predict, path: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Score an exported file on every test image in batches of BATCH; the batch latency is the
    median over those calls (the full ones; with fewer test images than BATCH, the one call), so
    the test pass is also the repeated measurement."""
    predict(images[:BATCH])  # warm-up: the first call plans memory and compiles
    parts, timed = [], []
    for start in range(0, len(images), BATCH):
        batch = images[start : start + BATCH]
        began = time.perf_counter()
        parts.append(predict(batch))
        timed.append((time.perf_counter() - began, len(batch)))
    full = [seconds for seconds, count in timed if count == BATCH]
    per_image = statistics.median(full) / BATCH if full else timed[0][0] / timed[0][1]
    result = evaluate_probabilities(np.concatenate(parts), labels).metrics()
    return {
        "test_accuracy": result["test_accuracy"],
        "test_top5_accuracy": result["test_top5_accuracy"],
        "size_mb": size_mb(path),
        "latency_b1_ms": single_image_ms(predict, images),
        "latency_b256_ms": per_image * 1e3,
    }


def rounded(row: dict[str, float]) -> dict[str, float]:
    """Accuracies to the test set's resolution, sizes to 10 kB, latencies to 3 significant digits."""
    return {
        key: round(value, ROUNDING[key]) if key in ROUNDING else float(f"{value:.3g}") for key, value in row.items()
    }

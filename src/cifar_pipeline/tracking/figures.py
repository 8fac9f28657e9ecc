"""Matplotlib figures for the MLflow run; DVC draws its own plots from the CSV files."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # stages run headless

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from cifar_pipeline.core.metric_names import ACCURACY_KEYS, LEARNING_RATE, LOSS_KEYS


def training_curves(rows: list[dict[str, float]], title: str) -> Figure:
    epochs = [row["epoch"] for row in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = [
        ("loss", LOSS_KEYS),
        ("accuracy", ACCURACY_KEYS),
        ("learning rate", (LEARNING_RATE,)),
    ]
    for ax, (label, keys) in zip(axes, panels, strict=True):
        for key in keys:
            ax.plot(epochs, [row[key] for row in rows], marker="." if len(rows) < 30 else None, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrix(matrix: np.ndarray, class_names: list[str], title: str) -> Figure:
    """Row-normalised, so each row reads as 'where did this class go'."""
    n = len(class_names)
    size = max(6.0, n * 0.18)
    fig, ax = plt.subplots(figsize=(size, size))
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=8 if n <= 20 else 5)
    ax.set_yticks(range(n), class_names, fontsize=8 if n <= 20 else 5)
    if n <= 20:
        for (row, col), count in np.ndenumerate(matrix):
            ax.text(
                col,
                row,
                str(count),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if shares[row, col] > 0.5 else "black",
            )
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig

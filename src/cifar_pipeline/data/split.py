"""Seeded, stratified sampling: the train/validation split and the quick-try subsample.

The seed script split without a seed, so no run could be repeated; here the indices
come from `numpy.random.default_rng(seed)` alone and are saved next to the arrays.
Stratifying keeps every class's share the same in each part, which matters most on
the small subsamples used for quick tries (CIFAR-100 has only 500 images a class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cifar_pipeline.core.errors import PipelineError
from cifar_pipeline.core.files import atomic_dir
from cifar_pipeline.core.layout import Classes, Part, Split, load_raw, write_split
from cifar_pipeline.core.params import Params


class SplitError(PipelineError, ValueError):
    """The split params leave a part of the split empty or a class out of it."""


def allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split `total` over classes in proportion to `counts` (largest remainder, exact sum)."""
    exact = counts * (total / counts.sum())
    quota = np.floor(exact).astype(np.int64)
    # Hand the leftover one by one to the largest remainders; ties go to the lower class id.
    leftover = total - int(quota.sum())
    order = np.lexsort((np.arange(len(counts)), -(exact - quota)))
    quota[order[:leftover]] += 1
    return np.minimum(quota, counts)


def stratified_take(labels: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pick `k` indices class-proportionally; return (taken, rest), each sorted."""
    _classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = allocate(counts, k)
    taken = []
    for index, want in enumerate(quota):
        members = np.flatnonzero(inverse == index)
        taken.append(rng.permutation(members)[:want])
    chosen = np.sort(np.concatenate(taken)) if taken else np.empty(0, np.int64)
    mask = np.zeros(len(labels), dtype=bool)
    mask[chosen] = True
    return chosen, np.flatnonzero(~mask)


def train_val_split(
    labels: np.ndarray, val_fraction: float, seed: int, max_images: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the official training set: (train, validation).

    `max_images` first draws a stratified subsample of the whole training set (for
    quick tries); the validation share is then taken from that subsample.
    """
    rng = np.random.default_rng(seed)
    pool = np.arange(len(labels))
    if max_images is not None and max_images < len(labels):
        pool, _ = stratified_take(labels, max_images, rng)
    n_val = round(len(pool) * val_fraction)
    if n_val < 1 or n_val >= len(pool):
        raise SplitError(
            f"split.val_fraction {val_fraction} of {len(pool)} images leaves an empty train or validation set; "
            f"use more images (split.max_train_images) or another split.val_fraction"
        )
    val_local, train_local = stratified_take(labels[pool], n_val, rng)
    train, val = pool[train_local], pool[val_local]
    classes = np.unique(labels)
    for part, indices in (("training", train), ("validation", val)):
        missing = np.setdiff1d(classes, labels[indices])
        if len(missing):
            raise SplitError(
                f"the {part} set has no image of {len(missing)} of the {len(classes)} classes "
                f"(e.g. class {int(missing[0])}) with {len(pool)} images and split.val_fraction {val_fraction}; "
                f"raise split.max_train_images (or set it to null) or change split.val_fraction"
            )
    return train, val


def select_test_images(labels: np.ndarray, max_images: int | None, seed: int) -> np.ndarray:
    """Indices of the test images to evaluate on: all, or a stratified subsample."""
    if max_images is None or max_images >= len(labels):
        return np.arange(len(labels))
    taken, _ = stratified_take(labels, max_images, np.random.default_rng(seed))
    return taken


def split_dataset(dataset: str, params: Params, raw_dir: Path, out_dir: Path) -> None:
    """Seeded stratified train/validation split; indices saved beside the arrays."""
    mode = params.dataset(dataset).label_mode
    settings = params.split
    raw = load_raw(raw_dir, mode)
    images, labels = raw.train_images, raw.train_labels[mode]
    test_images, test_labels = raw.test_images, raw.test_labels[mode]
    train_idx, val_idx = train_val_split(labels, settings.val_fraction, settings.seed, settings.max_train_images)
    test_idx = select_test_images(test_labels, settings.max_test_images, settings.seed)
    split = Split(
        train=Part(images[train_idx], labels[train_idx], train_idx),
        val=Part(images[val_idx], labels[val_idx], val_idx),
        test=Part(test_images[test_idx], test_labels[test_idx], test_idx),
        classes=Classes(names=raw.class_names[mode], label_mode=mode),
    )
    with atomic_dir(out_dir) as tmp:
        write_split(tmp, split)
    print(
        f"{dataset}: {len(train_idx)} train / {len(val_idx)} validation / {len(test_idx)} test images, "
        f"label_mode {mode}"
    )

"""The split's parts as MLflow datasets: which images exactly (a digest), linked to runs and metrics."""

from __future__ import annotations

import hashlib
import warnings

import mlflow
import numpy as np
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.types import Schema, TensorSpec

from cifar_pipeline.core.errors import redact

IMAGES_SCHEMA = Schema(
    [TensorSpec(np.dtype(np.uint8), (-1, 32, 32, 3), "image"), TensorSpec(np.dtype(np.int32), (-1,), "label")]
)


def images_digest(archive_md5: str, label_mode: str, indices: np.ndarray) -> str:
    """Which images, exactly: the archive's MD5, the label set, and the indices taken from it.

    Two runs with the same digest saw the same images with the same labels, whatever URL the
    archive came from; any other split, subsample or label set changes it.
    """
    digest = hashlib.sha256(f"{archive_md5}:{label_mode}:".encode())
    digest.update(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def images_dataset(dataset: str, part: str, url: str, archive_md5: str, label_mode: str, indices) -> MetaDataset:
    """One part of the split as an MLflow dataset: name `<dataset>-<part>`, the archive's URL as
    source, `images_digest` as digest. The images stay in DVC; this records which ones."""
    with warnings.catch_warnings():  # a local path "can be interpreted in multiple ways": all local files
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(redact(url))
    return MetaDataset(
        source=source,
        name=f"{dataset}-{part}",
        digest=images_digest(archive_md5, label_mode, indices),
        schema=IMAGES_SCHEMA,
    )


def log_images_input(dataset: str, part: str, url: str, archive_md5: str, label_mode: str, indices) -> MetaDataset:
    """Log one part of the split as an input of the active run (the runs table's Dataset column)."""
    data = images_dataset(dataset, part, url, archive_md5, label_mode, indices)
    mlflow.log_input(data, context={"train": "training", "val": "validation"}.get(part, part))
    return data

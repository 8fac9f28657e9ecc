"""The two CIFAR datasets as data, and the one reader of their official binary layout.

CIFAR-10 and CIFAR-100 differ only in file names and in how many label bytes lead each
record, so both are described by a `DatasetSpec` and parsed by the same code. The
python-format archives are never used: they unpickle arbitrary objects from a download.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cifar_pipeline.core.errors import PipelineError

IMAGE_SHAPE = (32, 32, 3)
PIXELS_PER_IMAGE = 32 * 32 * 3
MAX_NAMES_BYTES = 64 * 1024  # a class-names file (CIFAR-100's fine names: 0.8 kB)


class DataFormatError(PipelineError, ValueError):
    """An archive or batch file does not hold what the official layout promises."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's records live and how each record starts.

    `label_fields` lists the leading label bytes of one record, in file order; the
    label mode param picks one of them.
    """

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_fields: tuple[str, ...]
    num_classes: dict[str, int]
    label_names_files: dict[str, str]
    train_records: int = 50_000  # the official archive's counts: what a reader may accept at most
    test_records: int = 10_000

    @property
    def record_size(self) -> int:
        return len(self.label_fields) + PIXELS_PER_IMAGE

    @property
    def files(self) -> tuple[str, ...]:
        """Every member the reader takes from the archive's folder."""
        return (*self.train_files, *self.test_files, *self.label_names_files.values())

    def max_bytes(self, file: str) -> int:
        """The most bytes the official archive's `file` holds (a smaller sample is fine)."""
        if file in self.train_files:
            return self.train_records // len(self.train_files) * self.record_size
        if file in self.test_files:
            return self.test_records // len(self.test_files) * self.record_size
        return MAX_NAMES_BYTES

    @property
    def max_member_bytes(self) -> int:
        """The official archive's largest file: the most any one member or batch may hold."""
        return max(self.max_bytes(file) for file in self.files)


CIFAR10 = DatasetSpec(
    name="cifar10",
    folder="cifar-10-batches-bin",
    train_files=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    test_files=("test_batch.bin",),
    label_fields=("label",),
    num_classes={"label": 10},
    label_names_files={"label": "batches.meta.txt"},
)

CIFAR100 = DatasetSpec(
    name="cifar100",
    folder="cifar-100-binary",
    train_files=("train.bin",),
    test_files=("test.bin",),
    label_fields=("coarse", "fine"),
    num_classes={"coarse": 20, "fine": 100},
    label_names_files={"coarse": "coarse_label_names.txt", "fine": "fine_label_names.txt"},
)

SPECS: dict[str, DatasetSpec] = {spec.name: spec for spec in (CIFAR10, CIFAR100)}


def parse_records(raw: bytes | np.ndarray, spec: DatasetSpec, source: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Split fixed-size records into uint8 NHWC images and one label array per field.

    The record count comes from the byte count (the sample archive's batches are shorter
    than the official 10,000), so a size that is not a whole number of records means the
    file is truncated or is not this dataset.
    """
    buffer = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, bytes) else raw
    if buffer.size == 0 or buffer.size % spec.record_size:
        raise DataFormatError(
            f"{source}: {buffer.size} bytes is not a whole number of {spec.name} records "
            f"({spec.record_size} bytes each); the archive is truncated or not the "
            f"official {spec.name} binary version"
        )
    records = buffer.reshape(-1, spec.record_size)
    n_labels = len(spec.label_fields)
    labels: dict[str, np.ndarray] = {}
    for column, field in enumerate(spec.label_fields):
        values = records[:, column]
        limit = spec.num_classes[field]
        if values.max() >= limit:
            bad = int(np.argmax(values >= limit))
            kind = "" if len(spec.label_fields) == 1 else f"{field} "
            raise DataFormatError(
                f"{source}: record {bad} has {kind}label {int(values[bad])}, but "
                f"{spec.name} has only {limit} {kind}classes; the file is corrupt or "
                f"belongs to another dataset"
            )
        labels[field] = values.astype(np.int32)
    # Pixels are stored planar (all R, then G, then B); NHWC wants them interleaved.
    images = records[:, n_labels:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels

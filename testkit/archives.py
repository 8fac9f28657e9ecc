"""Tiny archives in the exact official CIFAR binary layouts, with a learnable pattern.

Each class gets its own bright patch position and colour on a noisy background, so a
small network beats chance within an epoch or two, and a shuffled or mis-parsed
channel order shows up as a failed assertion rather than silently.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np

from cifar_pipeline.core.datasets import SPECS, DatasetSpec


def class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 NHWC images whose content depends on the label."""
    n = len(labels)
    images = rng.integers(0, 60, size=(n, 32, 32, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label) % 16, 4)
        channel = int(label) // 16 % 3
        images[i, row * 8 : row * 8 + 8, col * 8 : col * 8 + 8, channel] = 200 + int(label) % 50
    return images


def encode_records(images: np.ndarray, label_columns: list[np.ndarray]) -> bytes:
    """The official record: label byte(s), then 1024 R, 1024 G, 1024 B bytes."""
    planar = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    labels = np.stack(label_columns, axis=1).astype(np.uint8)
    return np.concatenate([labels, planar], axis=1).tobytes()


def make_split(spec: DatasetSpec, n: int, rng: np.random.Generator) -> tuple[bytes, np.ndarray, dict[str, np.ndarray]]:
    fine_field = spec.label_fields[-1]
    fine = np.arange(n) % spec.num_classes[fine_field]
    rng.shuffle(fine)
    columns = {fine_field: fine}
    if "coarse" in spec.label_fields:
        columns["coarse"] = fine % spec.num_classes["coarse"]
    images = class_images(fine, rng)
    data = encode_records(images, [columns[field] for field in spec.label_fields])
    return data, images, columns


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, **info) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    for key, value in info.items():
        setattr(member, key, value)
    tar.addfile(member, io.BytesIO(data))


def build_archive(
    path: Path,
    dataset: str,
    train_per_file: int = 40,
    test: int = 40,
    seed: int = 0,
    extra: list[tarfile.TarInfo] | None = None,
    override: dict[str, bytes] | None = None,
) -> str:
    """Write a .tar.gz in the official layout and return its MD5.

    `override` replaces a member's bytes (e.g. a truncated batch); a None value drops it.
    """
    spec = SPECS[dataset]
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    for name in spec.train_files:
        files[name] = make_split(spec, train_per_file, rng)[0]
    for name in spec.test_files:
        files[name] = make_split(spec, test, rng)[0]
    for field, name in spec.label_names_files.items():
        files[name] = "\n".join(f"{field}_{i}" for i in range(spec.num_classes[field])).encode() + b"\n"
    files.update(override or {})
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo(spec.folder)
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o755
        tar.addfile(folder)
        for name, data in files.items():
            if data is not None:
                add_bytes(tar, f"{spec.folder}/{name}", data)
        for member in extra or []:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return hashlib.md5(path.read_bytes()).hexdigest()

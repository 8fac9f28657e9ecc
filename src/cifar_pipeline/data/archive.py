"""Reading a downloaded CIFAR archive without trusting it.

Nothing is extracted to disk: the batch files are read straight out of the tar into
memory, so no member can land outside the output folder. Every member is still
checked first, and an archive holding links, devices, absolute paths or `..` is
refused outright: the official archives hold none, so such an archive is not one.
What is read is bounded by the official archive's record counts, checked against each
member's header before its bytes are read: a small .tar.gz that inflates to gigabytes
(a "zip bomb", or a wrong file) is refused in seconds and megabytes.
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from cifar_pipeline.core.datasets import DataFormatError, DatasetSpec, parse_records
from cifar_pipeline.core.layout import RawDataset


def check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise DataFormatError(
            f"{archive}: member {member.name!r} would be written outside the output folder; refusing this archive"
        )
    if not (member.isfile() or member.isdir()):
        kind = "link" if (member.issym() or member.islnk()) else "special file"
        raise DataFormatError(
            f"{archive}: member {member.name!r} is a {kind}; CIFAR archives hold only regular files, "
            f"refusing this archive"
        )


MAX_MEMBERS = 64  # the official archives hold 8 (CIFAR-10) and 6 (CIFAR-100)


def check_size(member: tarfile.TarInfo, count: int, spec: DatasetSpec, archive: Path) -> None:
    if count > MAX_MEMBERS:
        raise DataFormatError(
            f"{archive} holds more than {MAX_MEMBERS} members; the official {spec.name} archive holds a few: "
            f"this is not it, check the url and md5 in params.yaml"
        )
    name = PurePosixPath(member.name).name
    if member.name == f"{spec.folder}/{name}" and name in spec.files:
        limit = spec.max_bytes(name)
    else:  # a member the reader skips (the readme) still has to be inflated to get past it
        limit = spec.max_member_bytes
    if member.size > limit:
        raise DataFormatError(
            f"{archive}: member {member.name!r} is {member.size:,} bytes, more than the official {spec.name} "
            f"archive's {limit:,}; refusing it before reading (a corrupt or hostile archive): check the url and md5"
        )


def read_archive(path: Path, spec: DatasetSpec) -> RawDataset:
    wanted = set(spec.files)
    contents: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for count, member in enumerate(tar, start=1):
                check_member(member, path)
                check_size(member, count, spec, path)
                parts = PurePosixPath(member.name).parts
                if member.isfile() and len(parts) == 2 and parts[0] == spec.folder and parts[1] in wanted:
                    handle = tar.extractfile(member)
                    assert handle is not None  # regular files always have data
                    contents[parts[1]] = handle.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataFormatError(
            f"{path} is not a readable .tar.gz ({type(err).__name__}: {err}); the download is truncated or "
            f"not the {spec.name} binary archive: delete it and check the url"
        ) from None

    def batches(names: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        parsed = []
        for name in names:
            if name not in contents:
                raise DataFormatError(
                    f"{path}: {spec.folder}/{name} is missing; this is not the official {spec.name} binary archive"
                )
            parsed.append(parse_records(contents.pop(name), spec, f"{spec.folder}/{name}"))
        images = np.concatenate([images for images, _ in parsed])
        labels = {field: np.concatenate([labels[field] for _, labels in parsed]) for field in spec.label_fields}
        return images, labels

    train_images, train_labels = batches(spec.train_files)
    test_images, test_labels = batches(spec.test_files)
    names = {
        field: _label_names(contents.get(file), spec.num_classes[field])
        for field, file in spec.label_names_files.items()
    }
    return RawDataset(train_images, train_labels, test_images, test_labels, names)


def _label_names(raw: bytes | None, count: int) -> list[str]:
    """Class names in label order; numbers when the names file is missing or odd."""
    if raw is not None:
        names = [line.strip() for line in raw.decode("utf-8", errors="replace").splitlines() if line.strip()]
        if len(names) == count:
            return names
    return [str(i) for i in range(count)]

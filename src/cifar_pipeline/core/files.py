"""Writing stage outputs so that a failure never leaves half of one behind.

A stage builds its output in a hidden sibling folder and renames it into place only
when everything in it is written, so DVC (and the next stage) either see a complete
output or none at all.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from cifar_pipeline.core.errors import PipelineError

# Written into every folder a stage makes: the only folders `atomic_dir` will ever replace.
MARKER = ".cifar-pipeline-output"
MARKER_TEXT = "Made by a cifar-pipeline stage; the stage may replace this whole folder when it reruns.\n"

# The checks of the `checked_commits` blocks now open.
_commit_checks: list[Callable[[], None]] = []


class OutputError(PipelineError):
    """An output path is taken by something this pipeline did not make."""


@contextmanager
def checked_commits(check: Callable[[], None] | None) -> Iterator[None]:
    """Within the block, run `check` before any output is put in place; it raises to keep the output back.

    The stage runner wraps each stage in one, to refuse outputs made with params that changed
    mid-run. A block rather than an argument: the writers in every layer would otherwise each
    carry a check they know nothing about; and nothing outlives the block.
    """
    if check is None:
        yield
        return
    _commit_checks.append(check)
    try:
        yield
    finally:
        _commit_checks.remove(check)


def _before_commit() -> None:
    for check in _commit_checks:
        check()


def check_replaceable(path: Path) -> None:
    """Refuse to replace `path` unless it is absent, an empty folder, or a folder a stage made.

    DVC deletes a stage's outputs before running it, so under `dvc repro` the path is
    absent; a stage run by hand with a wrong argument (`.`, `data`) must not delete
    someone's files.
    """
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink() and ((path / MARKER).is_file() or not any(path.iterdir())):
        return
    what = "a folder" if path.is_dir() else "a file"
    raise OutputError(
        f"refusing to replace {path}: it is {what} this pipeline did not make (no {MARKER} inside); "
        f"give the stage an output path that does not exist yet, or move {path} away"
    )


@contextmanager
def naming_errors(path: Path, *others: Path) -> Iterator[None]:
    """Give an OSError without a file name (disk full inside a library's write) the output's path.

    NumPy reports a short write on a full disk as a bare "N requested and M written", without
    an errno: that is a full disk too. With `others` (places the library also writes, such as
    the system temp folder), a full disk is blamed on the one with the least free space.
    """
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is None and " requested and " in str(err):
            err = OSError(errno.ENOSPC, f"No space left on device ({err})")
        if err.filename is None and err.errno is not None:
            place = _fullest([path, *others]) if err.errno in (errno.ENOSPC, errno.EDQUOT) else path
            raise OSError(err.errno, err.strerror or str(err), str(place)) from err
        raise


def _fullest(paths: list[Path]) -> Path:
    def free(path: Path) -> int:
        existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
        try:
            return shutil.disk_usage(existing).free
        except OSError:
            return 2**62

    return min(paths, key=free)


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces `path` if the block succeeds.

    Only a folder this pipeline made (it carries `MARKER`) or an empty one is ever
    replaced; anything else is refused before any work is done.
    """
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        with naming_errors(path):
            yield tmp
            (tmp / MARKER).write_text(MARKER_TEXT, encoding="utf-8")
        _before_commit()
        check_replaceable(path)
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(path: Path | str, durable: bool = False, output: bool = True) -> Iterator[Path]:
    """Yield a temporary file path in the same folder that is renamed to `path` on success.

    `durable` flushes the file to disk before the rename, so a power cut cannot leave the
    new name pointing at an empty file (checkpoint state). `output=False` is for the
    pipeline's own bookkeeping (checkpoints), which the commit checks do not hold back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with naming_errors(path):
            yield tmp
            if durable:
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
        if output:
            _before_commit()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_csv(path: Path, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    """Atomically write a CSV (DVC plots and metrics files are read while stages run)."""
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_arrays(folder: Path, **arrays: np.ndarray) -> None:
    """Plain .npy files: the next stage can memory-map them instead of loading copies."""
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array, allow_pickle=False)


def load_array(folder: Path | str, name: str, mmap: bool = True) -> np.ndarray:
    return np.load(Path(folder) / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)

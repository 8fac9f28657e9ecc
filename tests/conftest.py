"""Shared fixtures: tiny official-layout archives and a local HTTP server serving them."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from http_server import ArchiveServer, serve
from testkit.archives import build_archive

# pyproject.toml runs the suite on two pytest-xdist workers with `--dist loadscope`: each module
# stays on one worker (the e2e modules share one project each, set up once) and modules are handed out
# in collection order, the next one to a worker when its module has two tests left. Longest first
# (by worker-seconds in a whole run: docs/speed.md), so no worker is left with a long module at the end
# while the other has finished: the e2e module runs on one worker while the other takes the next four.
LONGEST_FIRST = (
    "test_pipeline_e2e.py",
    "test_team.py",
    "test_benchmarks.py",
    "test_distribution.py",
    "test_training_runs.py",
    "test_kills.py",
    "test_registry.py",
    "test_export.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every end-to-end test is slow too, so `-m "not slow"` is the quick loop without listing them."""
    for item in items:
        if item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module keeps its order


ARCHIVE_NAMES = {"cifar10": "cifar-10-binary.tar.gz", "cifar100": "cifar-100-binary.tar.gz"}


@pytest.fixture(scope="session")
def archive_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("archives")


@pytest.fixture(scope="session")
def archives(archive_dir: Path) -> dict[str, tuple[Path, str]]:
    """dataset -> (archive path, md5): CIFAR-10 with 5x60 train / 60 test, CIFAR-100 with 1,000 / 100.

    1,000 CIFAR-100 images are the fewest that give every class a validation image at
    val_fraction 0.1, which the split stage requires.
    """
    sizes = {"cifar10": (60, 60), "cifar100": (1000, 100)}
    result = {}
    for dataset, (train, test) in sizes.items():
        path = archive_dir / ARCHIVE_NAMES[dataset]
        result[dataset] = (path, build_archive(path, dataset, train_per_file=train, test=test))
    return result


@pytest.fixture(scope="session")
def session_server(archive_dir: Path, archives) -> Iterator[ArchiveServer]:
    httpd, thread = serve(archive_dir)
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def _reset(server: ArchiveServer) -> None:
    server.honour_range = True
    server.stall_after = None
    server.ranges.clear()
    server.login = None


@pytest.fixture
def server(session_server: ArchiveServer) -> Iterator[ArchiveServer]:
    """The session's server with its switches reset for this test, and again after it: fixtures
    that use `session_server` directly (the e2e project's download) must not meet a login or a
    stall a download test left switched on."""
    _reset(session_server)
    yield session_server
    _reset(session_server)


@pytest.fixture
def full_disk(tmp_path) -> Iterator[Path]:
    """A real file system that is full (a 4 MiB tmpfs filled by the file `filler`): writes fail
    with ENOSPC until the test deletes `filler`; folders can still be made.

    Mounting needs root (or CAP_SYS_ADMIN); elsewhere the test is skipped with the reason.
    """
    folder = tmp_path / "full-disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip() or 'mount failed'}): needs root")
    try:
        with open(folder / "filler", "wb") as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)

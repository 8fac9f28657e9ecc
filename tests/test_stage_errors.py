"""Stage scripts as DVC runs them: bad input gives one `error:` line, exit 2, no output left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.project import ROOT, create, edit_params, environment, run, stages_run


def stage(cwd: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    env = environment() | {"PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, str(ROOT / "stages" / f"{name}.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def workdir(tmp_path):
    for name in ("params.yaml", "recipes.yaml"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    return tmp_path


def assert_clean_failure(result: subprocess.CompletedProcess, message: str, workdir: Path) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    left = [
        p.relative_to(workdir)
        for p in workdir.rglob("*")
        if p.is_file() and p.name not in ("params.yaml", "recipes.yaml")
    ]
    assert left == [], left


def test_bad_param_stops_before_any_work(workdir):
    edit_params(workdir, lambda p: p["split"].update(val_fraction=1.5))
    result = stage(workdir, "download", "cifar10", "data/raw/cifar10")
    assert_clean_failure(result, "split.val_fraction must be between 0 and 1", workdir)


def test_md5_mismatch_leaves_no_output_and_no_partial(workdir, archives, server):
    path, _ = archives["cifar10"]
    edit_params(workdir, lambda p: p["data"]["cifar10"].update(url=server.url(path.name), md5="0" * 32))
    result = stage(workdir, "download", "cifar10", "data/raw/cifar10")
    assert_clean_failure(result, "MD5 mismatch", workdir)
    assert not (workdir / "data/raw/cifar10").exists()


def test_bad_archive_leaves_no_output(workdir, tmp_path_factory):
    bogus = tmp_path_factory.mktemp("bogus") / "cifar-10-binary.tar.gz"
    bogus.write_bytes(b"<html>an error page saved as the archive</html>")
    import hashlib

    md5 = hashlib.md5(bogus.read_bytes()).hexdigest()
    edit_params(workdir, lambda p: p["data"]["cifar10"].update(url=str(bogus), md5=md5))
    result = stage(workdir, "download", "cifar10", "data/raw/cifar10")
    assert_clean_failure(result, "not a readable .tar.gz", workdir)


def test_dataset_not_listed(workdir):
    edit_params(workdir, lambda p: p.update(datasets=["cifar10"]))
    result = stage(workdir, "download", "cifar100", "data/raw/cifar100")
    assert_clean_failure(result, "dataset 'cifar100' is not in 'datasets'", workdir)


def test_unwritable_output_folder(workdir, archives):
    path, md5 = archives["cifar10"]
    edit_params(workdir, lambda p: p["data"]["cifar10"].update(url=str(path), md5=md5))
    blocker = workdir / "data"
    if os.geteuid() == 0:  # root ignores permission bits: a file where the folder must go fails the same way
        blocker.write_text("not a folder")
    else:
        blocker.mkdir()
        blocker.chmod(0o500)
    try:
        result = stage(workdir, "download", "cifar10", "data/raw/cifar10")
    finally:
        blocker.chmod(0o700)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "error: cannot write" in errors[0] and "Traceback" not in result.stderr


def test_a_full_disk_names_the_output_leaves_nothing_and_the_rerun_finishes(workdir, archives, full_disk):
    path, md5 = archives["cifar10"]
    edit_params(workdir, lambda p: p["data"]["cifar10"].update(url=str(path), md5=md5))
    (workdir / "data").symlink_to(full_disk, target_is_directory=True)
    result = stage(workdir, "download", "cifar10", "data/raw/cifar10")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "no space left on the device writing" in line and "data/raw/cifar10" in line, line
    assert [p.name for p in full_disk.rglob("*") if not p.is_dir()] == ["filler"]  # no partial output
    assert not (full_disk / "raw/cifar10").exists()
    (full_disk / "filler").unlink()
    assert stage(workdir, "download", "cifar10", "data/raw/cifar10").returncode == 0
    assert (full_disk / "raw/cifar10").is_dir()


LEAKABLE = "s3cr3t-t0ken"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.update(datasets=[]), "'datasets' must be a non-empty list"),
        (
            lambda p: p.update(datasets=["cifar10", "cifar1000"]),
            "unknown dataset 'cifar1000' (did you mean 'cifar100'?)",
        ),
        (
            lambda p: p["data"]["cifar100"].update(url=f"https://reader:{LEAKABLE}@mirror.example.org/c.tar.gz"),
            "data.cifar100.url holds a login (`user:password@` before the host), which params.yaml, dvc.lock "
            "and DVC's run cache would store: take it out and put `machine HOST login USER password TOKEN`",
        ),
    ],
)
def test_params_problems_stop_dvc_repro_before_any_stage(tmp_path, change, message):
    """Without the check_params stage DVC would run nothing and succeed ([]), stop on missing
    `data.cifar1000.*` keys without naming the allowed datasets, or store a token in dvc.lock."""
    path = create(tmp_path / "project", {})
    edit_params(path, change)
    result = run(path, "dvc", "repro", check=False)
    assert result.returncode != 0, result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stdout + result.stderr
    assert stages_run(result.stdout) == ["check_params"]
    assert not (path / "data").exists() and not (path / "dvc.lock").exists()
    assert LEAKABLE not in result.stdout + result.stderr
    assert not [p for p in (path / ".dvc/cache").rglob("*") if p.is_file() and LEAKABLE in p.read_text(errors="ignore")]


@pytest.mark.parametrize("out", [".", "data", "theirs"])
def test_a_stage_run_by_hand_never_replaces_a_folder_it_did_not_make(workdir, archives, out):
    """`python stages/split.py cifar10 data/raw/cifar10 data` once wiped all of data/."""
    path, md5 = archives["cifar10"]
    edit_params(workdir, lambda p: p["data"]["cifar10"].update(url=str(path), md5=md5))
    (workdir / "data").mkdir()
    (workdir / "data/.gitignore").write_text("/raw\n")
    (workdir / "theirs").mkdir()
    (workdir / "theirs/notes.txt").write_text("mine")
    before = sorted(p.relative_to(workdir).as_posix() for p in workdir.rglob("*"))
    result = stage(workdir, "download", "cifar10", out)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"refusing to replace {out}: it is a folder this pipeline did not make" in errors[0]
    assert sorted(p.relative_to(workdir).as_posix() for p in workdir.rglob("*")) == before


def test_a_missing_input_names_the_stage_that_makes_it(workdir):
    result = stage(workdir, "normalize", "data/split/cifar10", "data/stats/cifar10.json")
    assert_clean_failure(
        result,
        "cannot read data/split/cifar10: it does not exist; the split stage makes it: run `dvc repro split@cifar10`",
        workdir,
    )

"""Kill it anywhere: `dvc repro` SIGKILLed in every stage in a row, at seeded moments; a plain
`dvc repro` then finishes and leaves the store, the registry and the outputs whole."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from testkit.project import create, edit_params, environment, run, stages_run

pytestmark = pytest.mark.e2e

SEED = 31  # the kill moments: change it to try others
EPOCHS = 8
STAGES = ("download", "split", "normalize", "train", "evaluate", "export", "register")
# Each `dvc repro` is killed a moment after DVC starts the target stage: most of a short stage
# is its Python and TensorFlow imports, so moments up to 4 s land in both; training is killed
# up to 0.5 s after its first checkpoint, mid-epoch or mid-checkpoint.
LONGEST_DELAY_S = {"train": 0.5}
DEFAULT_DELAY_S = 4.0


def repro_killed_in(path: Path, stage: str, delay: float) -> str | None:
    """`dvc repro`, SIGKILLed (DVC and the stage) `delay` s after it starts `stage` (training: after
    its first checkpoint); the stage that was running when it was killed, None if it finished."""
    proc = subprocess.Popen(
        ["dvc", "repro"],
        cwd=path,
        env=environment(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for line in proc.stdout:
            if line.startswith(f"Running stage '{stage}@cifar10'"):
                if stage == "train":
                    checkpoint = path / "data/.checkpoints"
                    while proc.poll() is None and not list(checkpoint.glob("cifar10-*/state.json")):
                        time.sleep(0.02)
                time.sleep(delay)
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=60)
                    later = [ln for ln in proc.stdout.read().splitlines() if ln.startswith("Running stage '")]
                    return later[-1].split("'")[1].split("@")[0] if later else stage
        return None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def lock_torn(path: Path) -> bool:
    """DVC 3.67 rewrites dvc.lock in place (truncate, then write): a kill in between leaves it
    torn, and every DVC command refuses the project until it is put back (docs/limits.md): a cut
    mid-key is a YAML error ("is invalid"), a cut elsewhere a schema error ("validation failed")."""
    refused = run(path, "dvc", "status", check=False).stderr
    return "dvc.lock' validation failed" in refused or "dvc.lock' is invalid" in refused  # schema or YAML error


def mend_torn_lock(path: Path) -> None:
    """The documented recovery: delete the torn dvc.lock; `dvc repro` restores every stage's
    outputs from DVC's run cache without rerunning it."""
    (path / "dvc.lock").unlink()


@dataclasses.dataclass(frozen=True)
class Killed:
    """A one-dataset project whose `dvc repro` was SIGKILLed in each stage in turn, then finished."""

    path: Path
    killed: list[str | None]  # where each kill landed (None: that repro finished first)
    torn: int  # how many kills left dvc.lock torn
    final: subprocess.CompletedProcess  # the plain `dvc repro` after them


@pytest.fixture(scope="module")
def killed_everywhere(tmp_path_factory, archives) -> Killed:
    """Shared by both tests: the torn-lock test needs a finished project, and this is one."""
    path = create(
        tmp_path_factory.mktemp("kills") / "project",
        {"cifar10": {"url": str(archives["cifar10"][0]), "md5": archives["cifar10"][1]}},
    )
    edit_params(path, lambda p: p.update(datasets=["cifar10"]) or p["train"].update(epochs=EPOCHS))
    moments = random.Random(SEED)  # noqa: S311 (kill moments, not secrets)
    killed, torn = [], 0
    for stage in STAGES:
        killed.append(repro_killed_in(path, stage, moments.uniform(0, LONGEST_DELAY_S.get(stage, DEFAULT_DELAY_S))))
        if lock_torn(path):
            torn += 1
            mend_torn_lock(path)
    return Killed(path, killed, torn, run(path, "dvc", "repro", check=False))


def test_sigkills_in_every_stage_leave_nothing_a_plain_repro_cannot_finish(killed_everywhere):
    path, killed, torn, final = dataclasses.astuple(killed_everywhere)
    # Where each kill landed depends on the machine's speed; training's and most others' must be hit.
    assert "train" in killed and len(set(killed) - {None}) >= 4, killed
    assert final.returncode == 0, final.stdout + final.stderr
    assert "Traceback" not in final.stdout + final.stderr, torn
    status = run(path, "dvc", "status").stdout
    assert status.split() == ["register@cifar10:", "always", "changed"], status  # register checks every time

    store = path / "mlflow.db"
    with contextlib.closing(sqlite3.connect(store)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("cifar")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    record = json.loads((path / "models/cifar10/mlflow_run.json").read_text())
    [trained] = [r for r in runs if r.info.run_id == record["run_id"]]
    steps = [m.step for m in client.get_metric_history(trained.info.run_id, "loss")]
    assert sorted(steps) == list(range(1, EPOCHS + 1)), steps  # resumed, each epoch logged once
    assert (
        trained.data.metrics["test_accuracy"]
        == json.loads((path / "metrics/cifar10.json").read_text())["test_accuracy"]
    )

    versions = client.search_model_versions("name='cifar10'")
    champion = client.get_model_version_by_alias("cifar10", "champion")
    registered = json.loads((path / "registry/cifar10.json").read_text())
    assert str(champion.version) == str(registered["version"]) and champion.run_id == trained.info.run_id
    assert all("test_accuracy" in v.tags for v in versions), [v.tags for v in versions]  # none half-registered
    assert len({v.source for v in versions}) == len(versions)  # no model registered twice


def test_a_torn_dvc_lock_is_mended_without_retraining(killed_everywhere):
    """What a kill during DVC's own write of dvc.lock leaves (an empty or cut file), and the
    README's recovery: a plain `dvc repro`, after deleting dvc.lock if DVC refuses it."""
    path = killed_everywhere.path  # a finished project (the kills' own one: no second first repro)
    assert killed_everywhere.final.returncode == 0
    lock = (path / "dvc.lock").read_text()
    registered = (path / "registry/cifar10.json").read_text()
    for cut in (0, len(lock) // 2, lock.index("outs:")):
        (path / "dvc.lock").write_text(lock[:cut])
        if lock_torn(path):
            mend_torn_lock(path)
        output = run(path, "dvc", "repro").stdout
        assert stages_run(output) == ["register@cifar10"], (cut, output)  # the rest restored from the run cache
        assert (path / "dvc.lock").read_text() == lock and (path / "registry/cifar10.json").read_text() == registered

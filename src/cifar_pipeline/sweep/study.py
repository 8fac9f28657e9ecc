"""The sweep's Optuna study and its MLflow parent run: opened (or created) once per worker, and
the same for every worker that names the same storage.

The storage is Optuna's RDB storage: a local SQLite file by default, the team's PostgreSQL for
workers on several machines. Workers heartbeat their running trial; a trial whose worker went
silent (killed, machine lost) is marked failed by the next worker that starts a trial, and its
MLflow run KILLED. Nothing else schedules anything: Optuna's storage is the only coordination.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from cifar_pipeline.core.errors import first_line, redact
from cifar_pipeline.core.sweep_trial import RUN_ATTR, STATE_TAG, SWEEP_TAG, make_pruner
from cifar_pipeline.sweep.spec import Sweep, SweepError
from cifar_pipeline.tracking import mlflow_store

SWEEPS_DIR = Path("sweeps")  # beside dvc.yaml: the default storage and each trial's log
DEFAULT_STORAGE_FILE = "optuna.db"
# Seconds between a running trial's heartbeats; a trial silent for twice as long is failed.
HEARTBEAT_ENV = "CIFAR_SWEEP_HEARTBEAT_S"
HEARTBEAT_S = 60
PARENT_ATTR = "mlflow_parent_run_id"
SPEC_ATTR = "sweep"
PARENT_WAIT_S = 60.0


def default_storage(root: Path) -> str:
    return f"sqlite:///{(root / SWEEPS_DIR / DEFAULT_STORAGE_FILE).resolve()}"


def storage_url(url: str | None, root: Path) -> str:
    """The storage URL, with PostgreSQL's driver named (SQLAlchemy 2.1 reads a bare
    `postgresql://` as psycopg 3, which is not installed; requirements.txt has psycopg2)."""
    if not url:
        (root / SWEEPS_DIR).mkdir(exist_ok=True)
        return default_storage(root)
    if url.startswith("postgresql://"):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def heartbeat_s() -> int:
    raw = os.environ.get(HEARTBEAT_ENV, "")
    if not raw:
        return HEARTBEAT_S
    if not raw.isdigit() or int(raw) < 1:
        raise SweepError(f"{HEARTBEAT_ENV} must be a whole number of seconds >= 1, got {raw!r}")
    return int(raw)


def open_storage(url: str):
    """Optuna's RDB storage at `url`, reached now (one line if it cannot be)."""
    import optuna
    import sqlalchemy.exc

    beat = heartbeat_s()
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
            heartbeat_interval=beat,
            grace_period=2 * beat,
            heartbeat_stale_trial_callback=end_lost_trial,
        )
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as err:
        raise SweepError(
            f"cannot use the sweep storage {redact(url)}: {redact(first_line(err))}; start that database or "
            "give another with --storage (default: a SQLite file in sweeps/)"
        ) from None


def end_lost_trial(study, trial) -> None:
    """Optuna's callback for a trial it failed because its worker stopped heartbeating: end the
    trial's MLflow run KILLED (it is RUNNING there, its process gone with the worker)."""
    run_id = trial.user_attrs.get(RUN_ATTR)
    print(f"trial {trial.number}: its worker stopped (no heartbeat); marked failed", flush=True)
    if not run_id:
        return
    client = MlflowClient()
    client.set_tag(run_id, STATE_TAG, "failed")
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, "failure", "its sweep worker stopped heartbeating (killed or lost); marked KILLED")
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))


def open_study(sweep: Sweep, storage, shown_storage: str):
    """The sweep's study and its MLflow parent run id: created by the first worker, loaded by the rest.

    A study of this name made from another definition (dataset, metric, space) is refused:
    its trials would not be comparable with the new ones.
    """
    import optuna

    experiment_id = mlflow_store.configure()
    described = json.dumps(sweep.described(), sort_keys=True)
    pruner = make_pruner(sweep.prune_after_epochs, sweep.prune_startup_trials)
    try:
        study = optuna.create_study(storage=storage, study_name=sweep.name, direction=sweep.direction, pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=sweep.name, storage=storage, pruner=pruner)
        if study.user_attrs.get(SPEC_ATTR, described) != described:
            raise SweepError(
                f"the study {sweep.name} in {shown_storage} was made from another definition of the sweep "
                f"({study.user_attrs[SPEC_ATTR]}); rename the sweep in sweeps.yaml, or delete the study "
                f"(`optuna delete-study --study-name {sweep.name} --storage URL`)"
            ) from None
        return study, _wait_for_parent(study)
    study.set_user_attr(SPEC_ATTR, described)
    parent = _create_parent(sweep, experiment_id, shown_storage)
    study.set_user_attr(PARENT_ATTR, parent)
    return study, parent


def _wait_for_parent(study) -> str:
    """The parent run id another worker is writing right now, for a study it just created."""
    deadline = time.monotonic() + PARENT_WAIT_S
    while (parent := study.user_attrs.get(PARENT_ATTR)) is None:
        if time.monotonic() > deadline:
            raise SweepError(
                f"the study {study.study_name} has no MLflow parent run: the worker that made it stopped while "
                "starting; delete the study (`optuna delete-study`) and start again"
            )
        time.sleep(1.0)  # `user_attrs` reads the storage each time
    return parent


def _create_parent(sweep: Sweep, experiment_id: str, shown_storage: str) -> str:
    client = MlflowClient()
    run = client.create_run(
        experiment_id,
        run_name=f"sweep-{sweep.name}",
        tags={
            SWEEP_TAG: sweep.name,
            "dataset": sweep.dataset,
            "sweep.metric": sweep.metric,
            "sweep.trials": str(sweep.trials),
            "sweep.storage": redact(shown_storage),
            "mlflow.note.content": (
                f"Sweep `{sweep.name}` (sweeps.yaml): {sweep.trials} trials of {sweep.dataset}, "
                f"{sweep.direction} {sweep.metric}. Each child run is one trial (tags `trial`, `state`); "
                f"`cifar-sweep {sweep.name} --best` prints the best one's values."
            ),
        },
    )
    client.log_param(run.info.run_id, "space", json.dumps(sweep.described()["space"])[:6000])
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run.info.run_id

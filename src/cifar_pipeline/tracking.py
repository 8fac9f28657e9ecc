"""The one place that talks to MLflow: which store, which experiment, which run, what tags.

Default store: `sqlite:///<project root>/mlflow.db`, MLflow's own default, so a bare
`mlflow ui` in the project root shows every run. Queued DVC experiments run in a copy
under `.dvc/tmp/exps/`; DVC passes the real project root as `DVC_ROOT`, and using it
keeps their runs (and artifacts) in the same store instead of a folder DVC deletes.
`MLFLOW_TRACKING_URI` overrides all of this for a shared server.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cifar_pipeline.errors import PipelineError

EXPERIMENT_NAME = "cifar"


class TrackingError(PipelineError):
    """The MLflow store or run that a stage needs is not there."""


def project_root() -> Path:
    """The DVC project root: DVC sets DVC_ROOT for stage commands (the parent repo for queued runs)."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT_NAME


def configure() -> str:
    """Point MLflow at the store and return the experiment id, creating the experiment once."""
    mlflow.set_tracking_uri(tracking_uri())
    client = MlflowClient()
    name = experiment_name()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # Without an explicit location a local store puts artifacts under the *current*
    # folder, which for a queued experiment is a temporary copy DVC deletes.
    location = None if "MLFLOW_TRACKING_URI" in os.environ else (project_root() / "mlruns").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        # Another stage (a parallel queued experiment) created it first.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_tags(dataset: str) -> dict[str, str]:
    tags = {"dataset": dataset, "mlflow.source.name": "dvc repro: stages/train.py"}
    commit = os.environ.get("DVC_EXP_BASELINE_REV") or git_commit()
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = exp
    return tags


def run_name(dataset: str) -> str:
    exp = os.environ.get("DVC_EXP_NAME")
    return f"{dataset}-{exp}" if exp else f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


@contextmanager
def new_run(dataset: str, params: dict[str, Any]) -> Iterator[mlflow.ActiveRun]:
    """Start the training run of one model; it ends FAILED if the block raises."""
    experiment_id = configure()
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name(dataset), tags=run_tags(dataset)) as run:
        mlflow.log_params(params)
        yield run


@contextmanager
def resume_run(run_id: str) -> Iterator[mlflow.ActiveRun]:
    """Reopen the training run so evaluation lands beside it, not in a run of its own."""
    configure()
    try:
        MlflowClient().get_run(run_id)
    except MlflowException:
        raise TrackingError(
            f"MLflow run {run_id} is not in the store {tracking_uri()}; the model was trained against another "
            f"store (MLFLOW_TRACKING_URI?) or the store was deleted: rerun training with `dvc repro --force` "
            f"on the train stage"
        ) from None
    with mlflow.start_run(run_id=run_id) as run:
        yield run

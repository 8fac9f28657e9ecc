"""The one place that talks to MLflow: which store, which experiment, which run, what tags.

Default store: `sqlite:///<project root>/mlflow.db`, MLflow's own default, so a bare
`mlflow ui` in the project root shows every run. Queued DVC experiments run in a copy
under `.dvc/tmp/exps/`; DVC passes the real project root as `DVC_ROOT`, and using it
keeps their runs (and artifacts) in the same store instead of a folder DVC deletes.
`MLFLOW_TRACKING_URI` overrides all of this for a shared server.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from cifar_pipeline.errors import PipelineError

EXPERIMENT_NAME = "cifar"
# MLflow 3's UI shows an experiment of this kind as model training (runs, charts), not GenAI traces.
EXPERIMENT_TAGS = {
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": (
        "CIFAR-10 and CIFAR-100 image classifiers trained by this project's DVC pipeline "
        "(`dvc repro`, `dvc exp run`): one run per dataset and experiment, with per-epoch loss, "
        "accuracy and top-5 accuracy (train and validation), test metrics, the confusion matrix "
        "and the model. Every run logs the same parameter keys, so runs of both datasets compare "
        "side by side; `dataset` tells them apart."
    ),
}


class TrackingError(PipelineError):
    """The MLflow store or run that a stage needs is not there."""


def project_root() -> Path:
    """The DVC project root: DVC sets DVC_ROOT for stage commands (the parent repo for queued runs)."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def default_uri() -> str:
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT_NAME


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise first-time set-up of a local SQLite store between parallel stages.

    Creating the tables (MLflow runs its migrations) or the experiment from two processes
    at once fails, as `dvc queue start -j 2` on a new project would; later writes are
    safe, as MLflow sets a 20 s SQLite busy timeout on every connection. A tracking
    server serialises its own clients.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    with open(uri.removeprefix("sqlite:///") + ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def configure() -> str:
    """Point MLflow at the store and return the experiment id, creating the experiment once."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)  # note: MLflow also exports it as MLFLOW_TRACKING_URI
    with _store_lock(uri):
        client = MlflowClient()
        name = experiment_name()
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            # Stores made before these tags existed get them; a description a person edited stays.
            for key, value in EXPERIMENT_TAGS.items():
                if key not in experiment.tags:
                    client.set_experiment_tag(experiment.experiment_id, key, value)
            return experiment.experiment_id
        # Without an explicit location a local store puts artifacts under the *current*
        # folder, which for a queued experiment is a temporary copy DVC deletes.
        location = (project_root() / "mlruns").as_uri() if uri == default_uri() else None
        try:
            return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
        except MlflowException:
            # Another client of a shared server created it first.
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
def _ending() -> Iterator[None]:
    """End the active run as FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED with the reason: never RUNNING."""
    try:
        yield
    except KeyboardInterrupt:
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as err:
        mlflow.set_tag("failure", f"{type(err).__name__}: {err}"[:4000])
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def _exists(run_id: str) -> bool:
    try:
        MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    return True


@contextmanager
def training_run(dataset: str, params: dict[str, Any], resume_id: str | None = None) -> Iterator[tuple[str, bool]]:
    """Yield (run id, resumed): the interrupted run `resume_id` if the store still has it, else a new run."""
    experiment_id = configure()
    if resume_id and _exists(resume_id):
        run = mlflow.start_run(run_id=resume_id)
        resumed = True
    else:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name(dataset), tags=run_tags(dataset))
        mlflow.log_params(params)
        resumed = False
    with _ending():
        yield run.info.run_id, resumed


def log_missing_epochs(run_id: str, rows: list[dict[str, float]]) -> None:
    """Log the epochs of `rows` the run does not have yet (a kill can fall between commit and log)."""
    logged = MlflowClient().get_metric_history(run_id, "loss")
    last = max((metric.step for metric in logged), default=0)
    for row in rows:
        if row["epoch"] > last:
            mlflow.log_metrics({key: value for key, value in row.items() if key != "epoch"}, step=int(row["epoch"]))


@contextmanager
def reopen_run(run_id: str) -> Iterator[None]:
    """Reopen the training run so evaluation lands beside it, not in a run of its own."""
    configure()
    if not _exists(run_id):
        raise TrackingError(
            f"MLflow run {run_id} is not in the store {tracking_uri()}; the model was trained against another "
            f"store (MLFLOW_TRACKING_URI?) or the store was deleted: retrain with `dvc repro --force train@<dataset>`"
        )
    mlflow.start_run(run_id=run_id)
    with _ending():
        yield


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


def log_images_input(dataset: str, part: str, url: str, archive_md5: str, label_mode: str, indices) -> None:
    """One part of the split as an MLflow dataset input (the runs table's Dataset column).

    Name `<dataset>-<part>`, the archive's URL as source, `images_digest` as digest; the
    images themselves stay in DVC, this records which ones a run used.
    """
    with warnings.catch_warnings():  # a local path "can be interpreted in multiple ways": all local files
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(url)
    data = MetaDataset(
        source=source,
        name=f"{dataset}-{part}",
        digest=images_digest(archive_md5, label_mode, indices),
        schema=IMAGES_SCHEMA,
    )
    mlflow.log_input(data, context={"train": "training", "val": "validation"}.get(part, part))

"""MLflow runs: the training run (started, resumed, ended, marked KILLED), evaluation reopening it,
its name, tags and link, and artifact logging that names a full disk."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
import requests
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cifar_pipeline.core.errors import PipelineError, redact
from cifar_pipeline.core.files import naming_errors
from cifar_pipeline.tracking import orphans
from cifar_pipeline.tracking.mlflow_store import TrackingError, configure, is_server, no_retries, tracking_uri


class RunStopped(PipelineError):
    """Training stopped on purpose before its end (a sweep's pruner): the run ends KILLED with the
    reason, not FAILED."""


def _end_after_failure(status: RunStatus, failure: str | None = None) -> None:
    """Mark the active run ended, as far as the store lets us: if it is the store that failed,
    the run stays RUNNING there (as after a SIGKILL), and the resumed run continues it."""
    with no_retries():
        if failure is not None:
            with suppress(MlflowException, requests.RequestException):
                mlflow.set_tag("failure", failure[:4000])
        with suppress(MlflowException, requests.RequestException):
            mlflow.end_run(RunStatus.to_string(status))  # pops the active run before its request


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


def run_link(experiment_id: str, run_id: str) -> str | None:
    """The run's page on a tracking server, as MLflow links it, without the URI's login (a
    browser asks for it); None for a local store, which `mlflow ui` shows."""
    uri = tracking_uri()
    if not is_server(uri):
        return None
    parts = urlparse(uri)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


@contextmanager
def _ending(run_id: str) -> Iterator[None]:
    """End the active run as FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED with the reason: never
    RUNNING; then print its link on a server.

    A run that failed once and then finished when resumed loses its old `failure` tag.
    """
    active = mlflow.active_run()
    link = run_link(active.info.experiment_id, run_id) if active else None
    try:
        try:
            yield
        except KeyboardInterrupt:
            _end_after_failure(RunStatus.KILLED)
            raise
        except RunStopped as err:
            _end_after_failure(RunStatus.KILLED, redact(str(err)))
            raise
        except BaseException as err:
            _end_after_failure(RunStatus.FAILED, redact(f"{type(err).__name__}: {err}"))
            raise
        client = MlflowClient()
        if "failure" in client.get_run(run_id).data.tags:
            client.delete_tag(run_id, "failure")
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
    finally:
        if link:
            print(f"MLflow run {run_id}: {link}")


@contextmanager
def artifact_writes() -> Iterator[None]:
    """Name the place in a write error that names no file: MLflow's local store writes through an
    open file object, so a full disk there said only "No space left"; MLflow and Keras also
    stage artifacts in the system temp folder. The one with less free space is named."""
    uri = mlflow.get_artifact_uri()
    parsed = urlparse(uri)
    store = Path(unquote(parsed.path)) if parsed.scheme == "file" else None
    with naming_errors(*([store] if store else []), Path(tempfile.gettempdir())):
        yield


def abandon_run(run_id: str, reason: str) -> None:
    """End an interrupted run FAILED with `reason` when it cannot be resumed (its checkpoint is corrupt)."""
    configure()
    if _exists(run_id):
        client = MlflowClient()
        client.set_tag(run_id, "failure", redact(reason)[:4000])
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))


def _exists(run_id: str) -> bool:
    try:
        MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    return True


# Seconds between MLflow's system-metric samples (CPU, memory, disk, network; GPU with NVML): 120
# points an hour for a training run that lasts hours, and a few for an evaluation that lasts a
# minute. MLflow logs nothing for a run shorter than one interval. The user's
# MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins.
SYSTEM_METRICS_INTERVAL_S = {"train": 30.0, "evaluate": 5.0}


def _sample_system_metrics(stage: str) -> None:
    if not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S[stage])


SEED_PARAMS = ("train.seed", "split.seed")


def recipe_digest(params: dict[str, Any]) -> str:
    """Every logged param but the seeds, in 12 hex digits: runs of one recipe over seeds share it.

    `mlflow ui`'s Group by on the `recipe` tag then shows one row per recipe with the mean
    and spread of its seeds' metrics.
    """
    kept = sorted((key, str(value)) for key, value in params.items() if key not in SEED_PARAMS)
    return hashlib.sha256(repr(kept).encode()).hexdigest()[:12]


@contextmanager
def training_run(
    dataset: str, params: dict[str, Any], resume_id: str | None = None, tags: dict[str, str] | None = None
) -> Iterator[tuple[str, bool]]:
    """Yield (run id, resumed): the interrupted run `resume_id` if the store still has it, else a
    new run with `tags` besides the usual ones (a sweep trial's parent and number)."""
    experiment_id = configure()
    _sample_system_metrics("train")
    if resume_id and _exists(resume_id):
        run = mlflow.start_run(run_id=resume_id, log_system_metrics=True)
        resumed = True
    else:
        params = {key: redact(value) if isinstance(value, str) else value for key, value in params.items()}
        tags = {**run_tags(dataset), "recipe": recipe_digest(params), **(tags or {})}
        run = mlflow.start_run(
            experiment_id=experiment_id, run_name=run_name(dataset), tags=tags, log_system_metrics=True
        )
        mlflow.log_params(params)
        resumed = False
    mlflow.set_tag(orphans.OWNER_TAG, orphans.this_process())
    for orphan in orphans.end_orphans(experiment_id, keep=run.info.run_id):
        print(f"MLflow run {orphan} was left RUNNING by a process that is gone: marked KILLED")
    with _ending(run.info.run_id):
        yield run.info.run_id, resumed


def log_missing_epochs(run_id: str, rows: list[dict[str, float]]) -> None:
    """Log the epochs of `rows` the run does not have yet (a kill can fall between commit and log)."""
    logged = MlflowClient().get_metric_history(run_id, "loss")
    last = max((metric.step for metric in logged), default=0)
    for row in rows:
        if row["epoch"] > last:
            mlflow.log_metrics({key: value for key, value in row.items() if key != "epoch"}, step=int(row["epoch"]))


def training_run_of(run_id: str, dataset: str = "<dataset>") -> Run:
    """The run that trained a model, from the configured store; one clear error if it is gone."""
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException:
        raise TrackingError(
            f"MLflow run {run_id} is not in the store {tracking_uri()}; the model was trained against another "
            f"store (MLFLOW_TRACKING_URI?) or the store was deleted: retrain with `dvc repro --force train@{dataset}`"
        ) from None


@contextmanager
def reopen_run(run_id: str) -> Iterator[None]:
    """Reopen the training run so evaluation lands beside it, not in a run of its own."""
    configure()
    training_run_of(run_id)
    _sample_system_metrics("evaluate")
    mlflow.start_run(run_id=run_id, log_system_metrics=True)
    mlflow.set_tag(orphans.OWNER_TAG, orphans.this_process())
    with _ending(run_id):
        yield

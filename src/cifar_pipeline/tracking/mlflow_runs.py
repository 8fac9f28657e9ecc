"""The one place that talks to MLflow: which store, which experiment, which run, what tags.

Default store: `sqlite:///<project root>/mlflow.db`, MLflow's own default, so a bare
`mlflow ui` in the project root shows every run. Queued DVC experiments run in a copy
under `.dvc/tmp/exps/`; DVC passes the real project root as `DVC_ROOT`, and using it
keeps their runs (and artifacts) in the same store instead of a folder DVC deletes.
`MLFLOW_TRACKING_URI` overrides all of this for a shared server (docs/team.md):
then a refused login, a server that is down or answers 5xx becomes one `error:` line
(`server_errors`), and the stage leaves no output, so the next `dvc repro` picks up.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
import requests
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from mlflow.utils.credentials import read_mlflow_creds

from cifar_pipeline.core.errors import PipelineError, first_line, redact
from cifar_pipeline.core.files import naming_errors
from cifar_pipeline.tracking import orphans

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


STORE_SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql", "databricks")
PREFLIGHT_TIMEOUT_S = 10.0


def _where(uri: str) -> str:
    """The URI, and whether the user chose it (MLflow itself exports the default once it is set)."""
    chosen = os.environ.get("MLFLOW_TRACKING_URI") not in (None, "", default_uri())
    return f"{uri} (from MLFLOW_TRACKING_URI)" if chosen else uri


def check_store(uri: str) -> None:
    """Fail in seconds, in one line, on a store MLflow cannot use.

    MLflow itself retries an unreachable server for minutes and then raises chained
    tracebacks, and reports an unknown scheme as a registry exception.
    """
    scheme = urlparse(uri).scheme.split("+")[0]
    if len(scheme) > 1 and scheme not in STORE_SCHEMES:
        raise TrackingError(
            f"MLflow tracking URI {_where(uri)} has the unsupported scheme '{scheme}'; "
            f"use one of {', '.join(STORE_SCHEMES)} (e.g. sqlite:///mlflow.db or http://host:5000), "
            f"or unset MLFLOW_TRACKING_URI for the project's mlflow.db"
        )
    if is_server(uri):
        # requests, as MLflow itself: it sends a URL's user:password@ as a login (urllib would take
        # it for part of the host name) and any answer, even 401, means a server is there.
        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=PREFLIGHT_TIMEOUT_S).close()
        except (requests.RequestException, OSError) as err:
            raise TrackingError(
                f"cannot reach the MLflow tracking server {_where(uri)}: {_reason(err)}; "
                f"start it, fix MLFLOW_TRACKING_URI, or unset it to use the project's mlflow.db"
            ) from None


def is_server(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def status_of(err: BaseException) -> int | None:
    """The HTTP status a failed MLflow request got, where it says."""
    if isinstance(err, requests.HTTPError) and err.response is not None:
        return err.response.status_code
    if isinstance(err, MlflowException) and err.error_code not in ("INTERNAL_ERROR", None):
        return err.get_http_status_code()
    return None


def _reason(err: BaseException) -> str:
    """Why a request failed, in words, from urllib3's "Caused by ..." that MLflow passes on."""
    text = str(err)
    if "error responses" in text:  # urllib3: "too many 503 error responses", after MLflow's retries
        codes = sorted(set(re.findall(r"too many (\d{3}) error responses", text)))
        return f"it answered HTTP {'/'.join(codes) or '5xx'} to every retry"
    if "Failed to resolve" in text or "Name or service not known" in text:
        return "its host name does not resolve: check the host in the URI"
    if "Connection refused" in text or "NewConnectionError" in text:
        return "connection refused: it is not running or not at this address"
    # A server that dies while it holds a request resets that connection instead of refusing it.
    if "Connection reset" in text or "Connection aborted" in text or "RemoteDisconnected" in text:
        return "it dropped the connection mid-request: it stopped or restarted"
    if "timed out" in text.lower() or "Timeout" in text:
        return "no answer in time (MLFLOW_HTTP_REQUEST_TIMEOUT)"
    return first_line(err)


def server_problem(err: BaseException, uri: str, needs: str | None = None) -> str:
    """One line for a request the tracking server refused or failed, with what to do about it.

    `needs`: the permission a 403 asks for, when it is not EDIT on the experiment.
    """
    where = _where(uri)
    user = urlparse(uri).username or read_mlflow_creds().username  # the URI's, the environment's, ~/.mlflow's
    status = status_of(err)
    if status == 401:
        who = f"user '{user}'" if user else "a request without a user name"
        return (
            f"the MLflow tracking server {where} answered 401 Unauthorized to {who}: set MLFLOW_TRACKING_USERNAME "
            f"and MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials) to your account there; if they worked "
            f"a moment ago, the server cannot read its user database (see the server's log)"
        )
    if status == 403:
        needs = needs or f"EDIT permission on experiment '{experiment_name()}' and the registered models"
        return (
            f"the MLflow tracking server {where} does not let user '{user}' do this (403: {first_line(err, 200)}); "
            f"ask its admin for {needs}"
        )
    return (
        f"the MLflow tracking server {where} failed ({_reason(err)}); this stage left no output. When the "
        f"server works again, run `dvc repro` again: training resumes after its last finished epoch, in the same run"
    )


@contextmanager
def server_errors() -> Iterator[None]:
    """Report a tracking server's failure as one line; also a decorator for a stage's body.

    MLflow raises its own exception or, for artifact uploads, a bare `requests` one, each
    with a screenful of chained tracebacks, after its retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    default 7 with exponential back-off: minutes).
    """
    try:
        yield
    except (MlflowException, requests.RequestException) as err:
        uri = tracking_uri()
        if (problem := store_file_problem(err, uri)) is not None:
            raise TrackingError(problem) from None
        if not is_server(uri):
            raise
        raise TrackingError(server_problem(err, uri)) from None


# SQLite's words for a store file it cannot write, and what each means for the user.
_STORE_FILE_FAULTS = {
    "database or disk is full": "the disk that holds it is full: free space there",
    "disk I/O error": "its disk failed a write (full, or removed): free space or check the disk",
    "readonly database": "it is read-only: give this user write permission on it and its folder",
    "unable to open database file": "its folder cannot be written or does not exist: check the folder's permissions",
}


def store_file_problem(err: BaseException, uri: str) -> str | None:
    """One line for a local SQLite store that cannot be written, or None for any other fault."""
    if not uri.startswith("sqlite:"):
        return None
    for words, meaning in _STORE_FILE_FAULTS.items():
        if words in str(err):
            return (
                f"the MLflow store {_where(uri)} cannot be written: {meaning}, or set MLFLOW_TRACKING_URI to a "
                f"store elsewhere; then run `dvc repro` again (training resumes after its last finished epoch)"
            )
    return None


@contextmanager
def _no_retries() -> Iterator[None]:
    """MLflow requests that fail at once: for marking a run ended after the server already failed."""
    saved = {key: os.environ.get(key) for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _end_after_failure(status: RunStatus, failure: str | None = None) -> None:
    """Mark the active run ended, as far as the store lets us: if it is the store that failed,
    the run stays RUNNING there (as after a SIGKILL), and the resumed run continues it."""
    with _no_retries():
        if failure is not None:
            with suppress(MlflowException, requests.RequestException):
                mlflow.set_tag("failure", failure[:4000])
        with suppress(MlflowException, requests.RequestException):
            mlflow.end_run(RunStatus.to_string(status))  # pops the active run before its request


def use_store() -> str:
    """Point MLflow (tracking and registry) at the project's store, checked; no experiment is made.

    MLflow's own "View run ... at: <tracking URI>" line prints the URI as given, a password in it
    included; it is switched off here and `_ending` prints the link without the login.
    """
    uri = tracking_uri()
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    check_store(uri)
    mlflow.set_tracking_uri(uri)  # note: MLflow also exports it as MLFLOW_TRACKING_URI
    return uri


def configure() -> str:
    """Point MLflow at the store and return the experiment id, creating the experiment once."""
    uri = use_store()
    with _store_lock(uri):
        name = experiment_name()
        try:
            client = MlflowClient()
            experiment = client.get_experiment_by_name(name)
        except Exception as err:  # SQLAlchemy, a server's answer, a broken file: the store is unusable
            if is_server(uri) and isinstance(err, MlflowException | requests.RequestException):
                raise TrackingError(server_problem(err, uri)) from None
            if (problem := store_file_problem(err, uri)) is not None:
                raise TrackingError(problem) from None
            advice = (
                "move the file away (a new one is made) or set MLFLOW_TRACKING_URI"
                if uri.startswith("sqlite:")
                else "check MLFLOW_TRACKING_URI"
            )
            raise TrackingError(
                f"the MLflow store {_where(uri)} cannot be used: it is not an MLflow database or server "
                f"({type(err).__name__}: {first_line(err)}); {advice}"
            ) from None
        if experiment is not None and experiment.lifecycle_stage == "deleted":
            raise TrackingError(
                f"the MLflow experiment '{name}' (id {experiment.experiment_id}) is deleted (in MLflow's trash); "
                f"restore it with `mlflow experiments restore --experiment-id {experiment.experiment_id}` "
                f"(MLFLOW_TRACKING_URI={uri}), or set MLFLOW_EXPERIMENT_NAME to another name"
            )
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
def training_run(dataset: str, params: dict[str, Any], resume_id: str | None = None) -> Iterator[tuple[str, bool]]:
    """Yield (run id, resumed): the interrupted run `resume_id` if the store still has it, else a new run."""
    experiment_id = configure()
    _sample_system_metrics("train")
    if resume_id and _exists(resume_id):
        run = mlflow.start_run(run_id=resume_id, log_system_metrics=True)
        resumed = True
    else:
        params = {key: redact(value) if isinstance(value, str) else value for key, value in params.items()}
        tags = {**run_tags(dataset), "recipe": recipe_digest(params)}
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


def images_dataset(dataset: str, part: str, url: str, archive_md5: str, label_mode: str, indices) -> MetaDataset:
    """One part of the split as an MLflow dataset: name `<dataset>-<part>`, the archive's URL as
    source, `images_digest` as digest. The images stay in DVC; this records which ones."""
    with warnings.catch_warnings():  # a local path "can be interpreted in multiple ways": all local files
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(redact(url))
    return MetaDataset(
        source=source,
        name=f"{dataset}-{part}",
        digest=images_digest(archive_md5, label_mode, indices),
        schema=IMAGES_SCHEMA,
    )


def log_images_input(dataset: str, part: str, url: str, archive_md5: str, label_mode: str, indices) -> MetaDataset:
    """Log one part of the split as an input of the active run (the runs table's Dataset column)."""
    data = images_dataset(dataset, part, url, archive_md5, label_mode, indices)
    mlflow.log_input(data, context={"train": "training", "val": "validation"}.get(part, part))
    return data


def model_id_of(model_uri: str | None) -> str | None:
    """`m-<id>` of a logged model's `models:/m-<id>` URI (what the train stage records), else None."""
    if model_uri and model_uri.startswith("models:/m-"):
        return model_uri.removeprefix("models:/")
    return None


def model_scores(model_id: str, digest: str) -> dict[str, float]:
    """The metrics MLflow holds for a logged model on the images with this digest (newest per key)."""
    newest: dict[str, tuple[int, float]] = {}
    for metric in MlflowClient().get_logged_model(model_id).metrics or []:
        if metric.dataset_digest == digest and metric.timestamp >= newest.get(metric.key, (-1, 0.0))[0]:
            newest[metric.key] = (metric.timestamp, metric.value)
    return {key: value for key, (_, value) in newest.items()}

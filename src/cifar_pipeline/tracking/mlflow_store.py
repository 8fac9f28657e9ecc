"""Which MLflow store and experiment, checked before any work, and its faults as one line.

The other MLflow modules: `mlflow_runs` (the runs), `mlflow_datasets` (the split's parts as
datasets), `mlflow_models` (what the store holds about a logged model).

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
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import read_mlflow_creds

from cifar_pipeline.core.errors import PipelineError, first_line

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
def no_retries() -> Iterator[None]:
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
            # An experiment made outside the pipeline (by hand on a shared server) gets them; a
            # description a person edited stays.
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

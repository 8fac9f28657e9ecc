import os
import socket
import subprocess
import sys
import time

import mlflow
import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, PERMISSION_DENIED, UNAUTHENTICATED
from mlflow.tracking import MlflowClient

from cifar_pipeline.tracking import mlflow_runs, mlflow_store
from testkit.project import ROOT, environment


def test_default_store_is_sqlite_at_the_dvc_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # what DVC sets, also for queued runs in .dvc/tmp/exps
    assert mlflow_store.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_tracking_uri_env_wins(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert mlflow_store.tracking_uri() == "http://127.0.0.1:5000"


@pytest.mark.slow
def test_parallel_first_use_of_a_fresh_store_agrees_on_one_experiment(tmp_path):
    """What `dvc queue start -j 2` does on a new project: several stages create the store at once."""
    code = "from cifar_pipeline.tracking import mlflow_runs, mlflow_store; print(mlflow_store.configure())"
    env = environment() | {"DVC_ROOT": str(tmp_path), "PYTHONPATH": str(ROOT / "src")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in results]
    ids = {out.strip().splitlines()[-1] for out, _ in results}
    assert len(ids) == 1
    assert (tmp_path / "mlflow.db").is_file()


@pytest.fixture
def store(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    return tmp_path


def test_a_file_that_is_not_a_database_is_named_in_one_line(store):
    (store / "mlflow.db").write_bytes(b"\x00junk" * 1000)
    with pytest.raises(mlflow_store.TrackingError, match=r"mlflow.db cannot be used: it is not an MLflow database"):
        mlflow_store.configure()


def test_an_unreachable_server_fails_in_seconds(monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(
        mlflow_store.TrackingError, match=r"cannot reach the MLflow tracking server http://127.0.0.1:\d+ \("
    ):
        mlflow_store.configure()
    assert time.monotonic() - start < 15


def test_an_unsupported_scheme_names_the_variable_and_the_schemes(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://bar")
    with pytest.raises(mlflow_store.TrackingError, match=r"foo://bar \(from MLFLOW_TRACKING_URI\) has the unsupported"):
        mlflow_store.configure()


def test_a_deleted_experiment_says_how_to_restore_it(store):
    experiment_id = mlflow_store.configure()
    MlflowClient().delete_experiment(experiment_id)
    with pytest.raises(
        mlflow_store.TrackingError, match=rf"is deleted .*mlflow experiments restore --experiment-id {experiment_id}"
    ):
        mlflow_store.configure()


def test_a_run_that_finishes_after_a_failure_loses_the_failure_tag(store):
    mlflow_store.configure()
    with pytest.raises(OSError), mlflow_runs.training_run("cifar10", {"a": 1}) as (run_id, _):
        raise OSError(28, "No space left on device")
    assert MlflowClient().get_run(run_id).data.tags["failure"].startswith("OSError")
    with mlflow_runs.training_run("cifar10", {"a": 1}, resume_id=run_id) as (resumed_id, resumed):
        assert resumed and resumed_id == run_id
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and "failure" not in run.data.tags
    mlflow.set_tracking_uri("")


SERVER = "http://127.0.0.1:5999"


def http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} Client Error", response=response)


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (MlflowException("not authenticated", error_code=UNAUTHENTICATED), "401 Unauthorized to user 'alice'"),
        (http_error(401), "401 Unauthorized to user 'alice': set MLFLOW_TRACKING_USERNAME"),
        (MlflowException("no", error_code=PERMISSION_DENIED), "does not let user 'alice' do this (403"),
        (
            MlflowException("... (Caused by ResponseError('too many 503 error responses'))", error_code=INTERNAL_ERROR),
            "failed (it answered HTTP 503 to every retry)",
        ),
        (
            MlflowException('... (Caused by NewConnectionError("... [Errno 111] Connection refused"))'),
            "failed (connection refused: it is not running",
        ),
        (  # the server died holding this request (seen in test_team: killed while frozen)
            MlflowException(
                "API request to .../runs/log-batch failed with exception HTTPConnectionPool(host='127.0.0.1', "
                "port=5999): Max retries exceeded (Caused by ProtocolError('Connection aborted.', "
                "ConnectionResetError(104, 'Connection reset by peer')))"
            ),
            "failed (it dropped the connection mid-request: it stopped or restarted)",
        ),
    ],
)
def test_a_server_failure_is_one_line_that_says_what_to_do(monkeypatch, err, expected):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SERVER)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    with pytest.raises(mlflow_store.TrackingError) as caught, mlflow_store.server_errors():
        raise err
    message = str(caught.value)
    assert expected in message and SERVER in message and "\n" not in message


def test_the_user_name_may_come_from_mlflows_credentials_file(monkeypatch, tmp_path):
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow/credentials").write_text("[mlflow]\nmlflow_tracking_username = bob\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    message = mlflow_store.server_problem(http_error(401), SERVER)
    assert "to user 'bob'" in message


def test_errors_of_a_local_store_keep_their_type(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(MlflowException), mlflow_store.server_errors():
        raise MlflowException("a bug of ours, with its traceback")


def test_a_run_is_let_go_at_once_when_its_server_already_failed(monkeypatch, tmp_path):
    """After a failed request (MLflow retried it for minutes), ending the run must not retry again."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.start_run()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once the socket closes
    mlflow.set_tracking_uri(dead)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")  # MLflow's default: minutes of back-off
    started = time.monotonic()
    mlflow_runs._end_after_failure(mlflow_runs.RunStatus.FAILED, "the server went away")
    assert time.monotonic() - started < 15
    assert mlflow.active_run() is None
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"


def test_a_tracking_uri_with_a_login_reaches_a_server_that_is_up(server):
    """urllib took `alice:pw@127.0.0.1` for a host name and reported it unknown; requests sends the login."""
    server.login = ("alice", "pw")
    mlflow_store.check_store(f"http://alice:pw@127.0.0.1:{server.server_address[1]}")
    server.login = None

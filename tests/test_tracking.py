import socket
import subprocess
import sys
import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from cifar_pipeline import tracking
from project import ROOT, environment


def test_default_store_is_sqlite_at_the_dvc_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # what DVC sets, also for queued runs in .dvc/tmp/exps
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_tracking_uri_env_wins(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


def test_parallel_first_use_of_a_fresh_store_agrees_on_one_experiment(tmp_path):
    """What `dvc queue start -j 2` does on a new project: several stages create the store at once."""
    code = "from cifar_pipeline import tracking; print(tracking.configure())"
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
    with pytest.raises(tracking.TrackingError, match=r"mlflow.db cannot be used: it is not an MLflow database"):
        tracking.configure()


def test_an_unreachable_server_fails_in_seconds(monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(
        tracking.TrackingError, match=r"cannot reach the MLflow tracking server http://127.0.0.1:\d+ \("
    ):
        tracking.configure()
    assert time.monotonic() - start < 15


def test_an_unsupported_scheme_names_the_variable_and_the_schemes(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://bar")
    with pytest.raises(tracking.TrackingError, match=r"foo://bar \(from MLFLOW_TRACKING_URI\) has the unsupported"):
        tracking.configure()


def test_a_deleted_experiment_says_how_to_restore_it(store):
    experiment_id = tracking.configure()
    MlflowClient().delete_experiment(experiment_id)
    with pytest.raises(
        tracking.TrackingError, match=rf"is deleted .*mlflow experiments restore --experiment-id {experiment_id}"
    ):
        tracking.configure()


def test_a_run_that_finishes_after_a_failure_loses_the_failure_tag(store):
    tracking.configure()
    with pytest.raises(OSError), tracking.training_run("cifar10", {"a": 1}) as (run_id, _):
        raise OSError(28, "No space left on device")
    assert MlflowClient().get_run(run_id).data.tags["failure"].startswith("OSError")
    with tracking.training_run("cifar10", {"a": 1}, resume_id=run_id) as (resumed_id, resumed):
        assert resumed and resumed_id == run_id
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and "failure" not in run.data.tags
    mlflow.set_tracking_uri("")

import subprocess
import sys

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

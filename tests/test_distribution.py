"""`train.distribute` through the real train stage: MirroredStrategy over two logical CPUs.

CIFAR_LOGICAL_CPUS=2 splits the CPU into two devices, as two GPUs would be on a GPU machine; the
mirrored project computes in float16 under Keras's loss scaling, as `auto` does on such a machine
(XLA, its third choice there, is tests/test_gpu_path.py's).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cifar_pipeline.core.layout import load_images
from cifar_pipeline.training import distribution, keras_workaround, trainer
from testkit.project import create, edit_params, environment, run, start_training

pytestmark = pytest.mark.e2e

TWO_DEVICES = {"CIFAR_LOGICAL_CPUS": "2"}
THREE_DEVICES = {"CIFAR_LOGICAL_CPUS": "3"}  # what `auto` takes on a 3-GPU machine
PER_EPOCH = ["loss", "val_loss", "accuracy", "val_top5_accuracy"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, archives):
    data = {"cifar10": {"url": archives["cifar10"][0].as_uri(), "md5": archives["cifar10"][1]}}
    path = create(tmp_path_factory.mktemp("mirrored") / "project", data)
    edit_params(
        path,
        lambda p: (
            p.update(datasets=["cifar10"])
            or p["train"].update(distribute="mirrored", epochs=3, mixed_precision="float16")
        ),
    )
    return path


def runs(path):
    client = MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cifar")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_mirrored_over_devices_that_do_not_divide_the_batch_trains_one_run_and_a_portable_model(project):
    """Batches of 29 over 3 replicas (10, 10, 9 images), and 30 validation images whose last batch
    would hold one: Keras 3.15 failed on the first, every model on the second (an empty replica)."""
    edit_params(project, lambda p: p["train"].update(batch_size=2))
    refused = run(project, "dvc", "repro", "train@cifar10", env=THREE_DEVICES, check=False)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "error: train.batch_size 2 is smaller than the 3 replicas" in refused.stderr
    assert not (project / "models/cifar10").exists()
    edit_params(project, lambda p: p["train"].update(batch_size=29))
    output = run(project, "dvc", "repro", "train@cifar10", env=THREE_DEVICES).stdout
    assert "warning" not in output
    client, found = runs(project)
    [r] = [r for r in found if r.info.status == "FINISHED"]
    assert r.data.params["resolved.distribute"] == "mirrored" and r.data.params["resolved.replicas"] == "3"
    assert r.data.params["resolved.dtype_policy"] == "mixed_float16"
    for key in PER_EPOCH:
        assert [m.step for m in client.get_metric_history(r.info.run_id, key)] == [1, 2, 3], key
    model = keras.models.load_model(project / "models/cifar10/model.keras")  # here: no strategy, one device
    images = load_images(project / "data/split/cifar10", "val")[:8]
    probabilities = model.predict(images, verbose=0)
    assert probabilities.shape == (8, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-3)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    logged = mlflow.pyfunc.load_model(json.loads((project / "models/cifar10/mlflow_run.json").read_text())["model_uri"])
    np.testing.assert_allclose(logged.predict(images), probabilities, atol=1e-5)


def test_mirrored_training_killed_mid_way_resumes_the_same_run(project):
    edit_params(project, lambda p: p["train"].update(epochs=8))
    _, before = runs(project)
    proc = start_training(project, 2, env=TWO_DEVICES)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _, found = runs(project)
    [killed] = found[len(before) :]
    output = run(project, "dvc", "repro", "train@cifar10", env=TWO_DEVICES).stdout
    assert f"resuming MLflow run {killed.info.run_id}" in output
    client, found = runs(project)
    [resumed] = found[len(before) :]
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.params["resolved.replicas"] == "2"
    assert [m.step for m in client.get_metric_history(resumed.info.run_id, "loss")] == list(range(1, 9))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tf_configs(workers: int = 2) -> list[str]:
    hosts = [f"127.0.0.1:{free_port()}" for _ in range(workers)]
    return [json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}) for i in range(workers)]


@pytest.fixture(scope="module")
def cluster_project(tmp_path_factory, archives):
    data = {"cifar10": {"url": archives["cifar10"][0].as_uri(), "md5": archives["cifar10"][1]}}
    path = create(tmp_path_factory.mktemp("multi_worker") / "project", data)
    multi_worker = {"distribute": "multi_worker", "epochs": 3}
    edit_params(path, lambda p: p.update(datasets=["cifar10"]) or p["train"].update(multi_worker))
    run(path, "dvc", "repro", "normalize@cifar10")  # the data every worker needs (`dvc pull` on other machines)
    return path


def start_cluster(path, configs: list[str], worker_dir=None) -> tuple[subprocess.Popen, subprocess.Popen]:
    """docs/distributed.md's launch: the chief through `dvc repro` in `path`, the other worker through its
    command in `worker_dir` (default: the same folder), its output in `worker.log` there."""
    worker_dir = worker_dir or path
    chief = subprocess.Popen(
        ["dvc", "repro", "train@cifar10"],
        cwd=path,
        env=environment() | {"TF_CONFIG": configs[0]},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    log = open(worker_dir / "worker.log", "w")  # noqa: SIM115 (the worker writes it while the test polls)
    worker = subprocess.Popen(
        [sys.executable, "-m", "cifar_pipeline.training.worker", "cifar10"],
        cwd=worker_dir,
        env=environment() | {"TF_CONFIG": configs[1], "PYTHONPATH": "src"},
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return chief, worker


def digest(output: str) -> str:
    [line] = [line for line in output.splitlines() if "trained" in line and "weights" in line]
    return line.rsplit(" ", 1)[1]


def test_two_workers_train_identical_weights_and_only_the_chief_logs_and_writes(cluster_project):
    path = cluster_project
    chief, worker = start_cluster(path, tf_configs())
    chief_output, _ = chief.communicate(timeout=300)
    assert worker.wait(timeout=60) == 0, (path / "worker.log").read_text()[-3000:]
    assert chief.returncode == 0, chief_output[-3000:]
    worker_output = (path / "worker.log").read_text()
    assert digest(chief_output) == digest(worker_output)
    client, found = runs(path)
    [r] = found
    assert r.info.status == "FINISHED" and r.data.params["resolved.replicas"] == "2"
    for key in PER_EPOCH:
        assert [m.step for m in client.get_metric_history(r.info.run_id, key)] == [1, 2, 3], key
    assert json.loads((path / "models/cifar10/mlflow_run.json").read_text())["run_id"] == r.info.run_id
    assert "train@cifar10" in (path / "dvc.lock").read_text()
    keras.models.load_model(path / "models/cifar10/model.keras")  # loads without a cluster
    assert "MLflow" not in worker_output and not list(path.glob("data/.checkpoints/cifar10-*"))


def test_a_worker_killed_mid_run_makes_the_chief_fail_with_one_line(cluster_project):
    path = cluster_project
    edit_params(path, lambda p: p["train"].update(epochs=200))
    chief, worker = start_cluster(path, tf_configs())
    deadline = time.monotonic() + 180
    while "Epoch 3/" not in (path / "worker.log").read_text() and time.monotonic() < deadline:
        assert worker.poll() is None, (path / "worker.log").read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(worker.pid, signal.SIGKILL)
    started = time.monotonic()
    output, _ = chief.communicate(timeout=240)  # TF's coordination service notices a silent peer in ~20 s
    assert chief.returncode != 0
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lost a peer" in errors[0], output[-3000:]
    assert "Traceback" not in output
    assert time.monotonic() - started < 180
    assert not (path / "models/cifar10").exists()


def test_the_worker_command_refuses_the_chiefs_tf_config(cluster_project):
    result = run(
        cluster_project,
        sys.executable,
        "-m",
        "cifar_pipeline.training.worker",
        "cifar10",
        check=False,
        env={"TF_CONFIG": tf_configs(1)[0], "PYTHONPATH": "src"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: TF_CONFIG makes this process the chief")


def test_keras_still_needs_the_multi_worker_workaround(tmp_path):
    """When this fails, Keras fixed keras-team/keras#20585 (or changed version): re-check
    `cifar_pipeline.training.keras_workaround` and drop it if plain Keras trains."""
    assert keras.__version__ == keras_workaround.KERAS_CHECKED
    probe = [sys.executable, str(Path(__file__).parent / "multi_worker_probe.py")]
    procs = [
        subprocess.Popen(probe, env=environment() | {"TF_CONFIG": config}, stdout=subprocess.PIPE, text=True)
        for config in tf_configs()
    ]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [3, 3], outputs
    assert all("PerReplica" in output for output in outputs), outputs


def test_xla_over_logical_cpu_devices_is_refused_before_training():
    """XLA fails inside `fit` when one step spans logical CPU devices; GPUs compile their own."""
    two = distribution.Distribution("mirrored", SimpleNamespace(num_replicas_in_sync=2))
    with pytest.raises(trainer.DistributionError, match="XLA cannot compile one step over the 2 logical CPU devices"):
        trainer.check_xla_devices(two, True, gpu=False)
    trainer.check_xla_devices(two, True, gpu=True)
    trainer.check_xla_devices(two, "auto", gpu=False)  # auto is off on a CPU


@pytest.mark.parametrize(
    ("tf_config", "message"),
    [
        (None, "TF_CONFIG is not set"),
        ("{not json", "is not a cluster description"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}', "is not a cluster description"),
        ('{"cluster": {"ps": ["a:1"]}, "task": {"type": "ps", "index": 0}}', "must be chief or worker"),
    ],
)
def test_a_missing_or_bad_tf_config_is_one_clear_error(monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(distribution.DistributionError, match=message):
        distribution.cluster()


@pytest.mark.parametrize("difference", ["params", "cluster list"])
def test_workers_with_other_params_or_cluster_lists_refuse_to_train(cluster_project, tmp_path, difference):
    """A worker whose params.yaml says other epochs, or whose TF_CONFIG spells the cluster
    differently (it still meets the chief, and would then wait on a peer that is not there):
    both stop at once, with one line each."""
    other = tmp_path / "other-worker"
    shutil.copytree(cluster_project, other, ignore=shutil.ignore_patterns("mlflow.db", "models"))
    configs = tf_configs()
    if difference == "params":
        edit_params(other, lambda p: p["train"].update(epochs=5))
    else:
        config = json.loads(configs[1])
        config["cluster"]["worker"][1] = config["cluster"]["worker"][1].replace("127.0.0.1", "localhost")
        configs[1] = json.dumps(config)
    chief, worker = start_cluster(cluster_project, configs, worker_dir=other)
    output, _ = chief.communicate(timeout=240)
    worker.wait(timeout=240)
    worker_output = (other / "worker.log").read_text()
    for result, text in ((worker.returncode, worker_output), (chief.returncode, output)):
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert result != 0 and len(errors) == 1 and "do not have the same params, data and TF_CONFIG" in errors[0], (
            text[-2000:]
        )


@pytest.mark.parametrize("index", [0, 1])
def test_a_worker_whose_peer_never_comes_ends_in_bounded_time_with_one_line(cluster_project, index):
    """The chief (through `dvc repro`) or a worker alone: TensorFlow would wait for its peer forever,
    holding the GIL and ignoring SIGTERM."""
    config = tf_configs()[index]
    command = (
        ("dvc", "repro", "train@cifar10")
        if index == 0
        else (sys.executable, "-m", "cifar_pipeline.training.worker", "cifar10")
    )
    started = time.monotonic()
    result = run(
        cluster_project,
        *command,
        check=False,
        env={"TF_CONFIG": config, "PYTHONPATH": "src", "CIFAR_CLUSTER_WAIT_S": "4"},
    )
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 1, output[-3000:]
    assert f"worker {index} of the multi_worker cluster waited 4 s for its peers" in errors[0]
    assert "Traceback" not in output and time.monotonic() - started < 90
    assert not (cluster_project / "models/cifar10").exists()


def test_a_tf_config_port_in_use_or_a_bad_wait_is_one_clear_error(monkeypatch):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        cluster = {"worker": [f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"]}
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
        with pytest.raises(distribution.DistributionError, match=f"port {port} of worker 0's TF_CONFIG .* is in use"):
            distribution.resolve("multi_worker")
    monkeypatch.setenv("CIFAR_CLUSTER_WAIT_S", "soon")
    with pytest.raises(distribution.DistributionError, match="CIFAR_CLUSTER_WAIT_S must be a number of seconds"):
        distribution.cluster_wait_s()
    monkeypatch.setenv(distribution.LOGICAL_CPUS_ENV, "100000")
    with pytest.raises(distribution.DistributionError, match="must be a whole number from 1 to 64"):
        distribution.split_cpu()

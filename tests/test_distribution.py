"""`train.distribute` through the real train stage: MirroredStrategy over two logical CPUs.

CIFAR_LOGICAL_CPUS=2 splits the CPU into two devices, as two GPUs would be on a GPU machine.
"""

from __future__ import annotations

import json
import os
import signal

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from project import create, edit_params, run, start_training

pytestmark = pytest.mark.e2e

TWO_DEVICES = {"CIFAR_LOGICAL_CPUS": "2"}
PER_EPOCH = ["loss", "val_loss", "accuracy", "val_top5_accuracy"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, archives):
    data = {"cifar10": {"url": archives["cifar10"][0].as_uri(), "md5": archives["cifar10"][1]}}
    path = create(tmp_path_factory.mktemp("mirrored") / "project", data)
    edit_params(path, lambda p: p.update(datasets=["cifar10"]) or p["train"].update(distribute="mirrored", epochs=3))
    return path


def runs(path):
    client = MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cifar")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_mirrored_over_two_devices_trains_one_run_and_a_model_that_needs_no_strategy(project):
    output = run(project, "dvc", "repro", "train@cifar10", env=TWO_DEVICES).stdout
    assert "warning" not in output
    client, found = runs(project)
    [r] = found
    assert r.info.status == "FINISHED"
    assert r.data.params["resolved.distribute"] == "mirrored" and r.data.params["resolved.replicas"] == "2"
    for key in PER_EPOCH:
        assert [m.step for m in client.get_metric_history(r.info.run_id, key)] == [1, 2, 3], key
    model = keras.models.load_model(project / "models/cifar10/model.keras")  # here: no strategy, one device
    images = np.load(project / "data/split/cifar10/val_images.npy")[:8]
    probabilities = model.predict(images, verbose=0)
    assert probabilities.shape == (8, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-3)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    logged = mlflow.pyfunc.load_model(json.loads((project / "models/cifar10/mlflow_run.json").read_text())["model_uri"])
    np.testing.assert_allclose(logged.predict(images), probabilities, atol=1e-5)


def test_mirrored_training_killed_mid_way_resumes_the_same_run(project):
    edit_params(project, lambda p: p["train"].update(epochs=20))
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
    assert [m.step for m in client.get_metric_history(resumed.info.run_id, "loss")] == list(range(1, 21))

"""What `auto` picks on a GPU, run on this CPU: the default recipe under XLA (`jit_compile: true`)
and float16 with Keras's loss scaling, through every stage to the registry and the served model.

(`distribute: mirrored`, `auto`'s third choice on 2+ GPUs, runs in float16 over two logical
CPU devices in tests/test_distribution.py; XLA cannot span logical CPU devices.)
"""

from __future__ import annotations

import json
import zipfile

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cifar_pipeline.core.layout import load_images
from cifar_pipeline.training.recipe import Triangular
from testkit.project import create, edit_params, run

pytestmark = pytest.mark.e2e

FORMATS = ["saved_model", "litert_float16", "litert_int8", "onnx"]
EPOCHS, BATCH = 2, 32


@pytest.fixture(scope="module")
def project(tmp_path_factory, archives):
    """The default recipe (airbench94), its network narrowed, reproduced once with the GPU's settings."""
    data = {"cifar10": {"url": archives["cifar10"][0].as_uri(), "md5": archives["cifar10"][1]}}
    train = {
        "epochs": EPOCHS,
        "batch_size": BATCH,
        "jit_compile": True,
        "mixed_precision": "float16",
        "model": {"widths": [8, 16, 16]},
    }
    path = create(tmp_path_factory.mktemp("gpu") / "project", data, train=train, recipe="airbench94")
    edit_params(
        path, lambda p: p.update(datasets=["cifar10"]) or p["export"].update(formats=FORMATS, calibration_images=16)
    )
    run(path, "dvc", "repro")
    return path


def training_run(path):
    client = MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    run_id = json.loads((path / "models/cifar10/mlflow_run.json").read_text())["run_id"]
    return client, client.get_run(run_id)


def test_the_default_recipe_trains_under_xla_and_float16_loss_scaling(project):
    client, r = training_run(project)
    assert r.info.status == "FINISHED"
    assert r.data.params["recipe"] == "airbench94"
    assert r.data.params["resolved.dtype_policy"] == "mixed_float16"
    assert r.data.params["resolved.jit_compile"] == "True"
    losses = [m.value for m in client.get_metric_history(r.info.run_id, "loss")]
    assert len(losses) == EPOCHS and all(np.isfinite(losses))


def test_the_logged_rate_is_the_schedules_at_each_epochs_last_step_not_the_loss_scalers(project):
    client, r = training_run(project)
    train_images = int(r.data.params["train_images"])
    steps = -(-train_images // BATCH)
    peak, warmup = (
        float(r.data.params["train.learning_rate"]),
        float(r.data.params["train.lr_schedule.warmup_fraction"]),
    )
    schedule = Triangular(peak, round(warmup * steps * EPOCHS), steps * EPOCHS)
    logged = [m.value for m in sorted(client.get_metric_history(r.info.run_id, "learning_rate"), key=lambda m: m.step)]
    expected = [float(schedule(epoch * steps - 1)) for epoch in range(1, EPOCHS + 1)]
    assert logged == pytest.approx(expected, abs=1e-6)
    assert logged[0] > 0


def test_the_saved_model_holds_only_kerass_layers_and_predicts_as_served(project):
    """The fused training kernels are renamed back to Keras's layers in what is saved and logged."""
    with zipfile.ZipFile(project / "models/cifar10/model.keras") as saved:
        config = saved.read("config.json").decode()
    assert "cifar_pipeline" not in config and "FusedBatchNormalization" not in config
    model = keras.models.load_model(project / "models/cifar10/model.keras")
    images = load_images(project / "data/split/cifar10", "val")[:8]
    probabilities = model.predict(images, verbose=0)
    assert probabilities.shape == (8, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-3)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    served = mlflow.pyfunc.load_model("models:/cifar10@champion")  # what `mlflow models serve` loads
    np.testing.assert_allclose(served.predict(images), probabilities, atol=1e-3)


def test_every_export_format_of_the_float16_model_is_written_and_scored(project):
    scored = json.loads((project / "metrics/export/cifar10.json").read_text())
    text = json.dumps(scored)
    for name in FORMATS:
        assert name in text, name
    assert 0 <= json.loads((project / "metrics/cifar10.json").read_text())["test_accuracy"] <= 1

"""The logged model as `mlflow models serve` runs it: a direct graph call behind a request check."""

from __future__ import annotations

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from cifar_pipeline.inference.loading import load_model
from cifar_pipeline.tracking.logged_model import log_model
from cifar_pipeline.tracking.served_model import RequestRefused, check_images

IMAGES = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("images", "reason"),
    [
        (IMAGES / 255, "pixels must be whole numbers 0-255 (raw RGB, not scaled to 0-1)"),
        (IMAGES.astype(np.int64) + 1, "pixels must be 0-255, got values from 1 to 256"),
        (IMAGES.astype(np.int64) - 300, "pixels must be 0-255, got values from -300"),
        (np.full((1, 32, 32, 3), np.nan), "whole numbers 0-255"),
        (np.zeros((1, 28, 28)), "images must be shaped (N, 32, 32, 3), got (1, 28, 28)"),
        ([[[[1, 2, 3]]], [[[1]]]], "images must be shaped (N, 32, 32, 3), got ragged"),
        (np.zeros((0, 32, 32, 3), np.uint8), "the request holds no images"),
        (np.zeros((5, 32, 32, 3), bool), "pixels must be numbers 0-255, got bool"),
        (np.full((1, 32, 32, 3), "7"), "pixels must be numbers 0-255"),
        (np.zeros((11, 32, 32, 3), np.uint8), "a request holds at most 10 images, this one 11: split it"),
        (pd.DataFrame({"a": [1]}), 'send {"inputs": [...]}'),
    ],
)
def test_a_request_that_is_not_raw_images_is_refused_in_one_line(images, reason):
    with pytest.raises(RequestRefused) as refused:
        check_images(images, limit=10)
    assert reason in refused.value.message and "\n" not in refused.value.message
    refused.value.message = "MLflow's scoring server quotes the whole request here"
    assert reason in refused.value.message and refused.value.get_http_status_code() == 400


def test_whole_numbers_in_any_type_are_the_same_images():
    for images in (IMAGES, IMAGES.astype(np.int64), IMAGES.astype(np.float64)):
        checked = check_images(images, limit=10)
        assert checked.dtype == np.uint8 and np.array_equal(checked, IMAGES)


def test_the_logged_model_is_the_keras_model_called_directly(tmp_path, monkeypatch):
    """Chunks of 64 images, one traced graph: the same probabilities as the Keras model."""
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Conv2D(4, 3)(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    about = {"names": [f"c{i}" for i in range(10)], "dataset": "cifar10", "label_mode": "label"}
    try:
        with mlflow.start_run():
            uri = log_model(model, IMAGES, about)
        loaded = mlflow.pyfunc.load_model(uri)
        images = np.random.default_rng(1).integers(0, 256, (150, 32, 32, 3), dtype=np.uint8)
        np.testing.assert_allclose(loaded.predict(images), model.predict(images, verbose=0), atol=1e-6)
        assert loaded.metadata.metadata["class_names"] == about["names"]
        assert loaded.metadata.signature.inputs is None
        with pytest.raises(MlflowException, match="whole numbers"):
            loaded.predict(images / 255)
        # The project's own callers (register, cifar-predict) send more than the limit in parts.
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
        monkeypatch.setenv("CIFAR_SERVE_MAX_IMAGES", "600")
        many = np.random.default_rng(2).integers(0, 256, (1300, 32, 32, 3), dtype=np.uint8)
        with pytest.raises(MlflowException, match="at most 600 images, this one 1300"):
            mlflow.pyfunc.load_model(uri).predict(many)
        np.testing.assert_allclose(load_model(uri).predict(many), model.predict(many, verbose=0), atol=1e-6)
    finally:
        mlflow.set_tracking_uri(None)

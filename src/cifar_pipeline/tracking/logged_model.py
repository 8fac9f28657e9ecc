"""Logging the trained classifier as an MLflow model: the `.keras` file behind `served_model`,
the file that `mlflow models serve`, pyfunc and the registry run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from cifar_pipeline.core.files import naming_errors
from cifar_pipeline.tracking import served_model

LIMIT = served_model.MAX_IMAGES_VARIABLE
INPUT_CONTRACT = "uint8 RGB images shaped (N, 32, 32, 3): raw 0-255 pixels, no normalisation"


def log_model(model: keras.Model, sample: np.ndarray, about: dict) -> str:
    """Log `model` with two real images as its input example (`serving_input_example.json`
    shows users what to send) and return its `models:/m-<id>` URI, what the register stage registers.

    The class names (and dataset, label mode) go into the model's metadata, so whoever
    loads it by `runs:/` or `models:/` URI gets them with it. The signature names the output
    only: an input schema would make MLflow cast JSON numbers to uint8 before `served_model`
    can refuse them (see there); the contract is in the metadata and the example.
    """
    sample = np.asarray(sample[:2], dtype=np.uint8)
    classes = len(about["names"])
    signature = ModelSignature(inputs=None, outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, classes))]))
    with tempfile.TemporaryDirectory() as tmp:
        keras_file = Path(tmp) / "model.keras"
        with naming_errors(keras_file):  # a full temp folder is named as such, not as the artifact store
            model.save(keras_file)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=Path(served_model.__file__),
            artifacts={served_model.KERAS_ARTIFACT: str(keras_file)},
            signature=signature,
            input_example=sample,
            metadata={
                "class_names": about["names"],
                "dataset": about["dataset"],
                "label_mode": about["label_mode"],
                "input": INPUT_CONTRACT,
                "max_images_per_request": f"{LIMIT} (default {served_model.DEFAULT_MAX_IMAGES})",
            },
            # Pinned from what trained the model; skips MLflow's slow requirement inference.
            pip_requirements=[
                f"keras=={keras.__version__}",
                f"tensorflow=={tf.__version__}",
                f"mlflow=={mlflow.__version__}",
            ],
        )
    return info.model_uri

"""What `mlflow models serve`, `mlflow.pyfunc.load_model` and the registry run: the trained Keras
classifier called directly, behind a check of every request.

Logged as a file ("models from code", `trainer.log_model`), so it runs where this package is not
installed: it imports only numpy, tensorflow, keras and mlflow. Why not the Keras flavour: its
pyfunc runs Keras's `predict` loop per request (about 100 ms for one image, and a progress bar in
the server's log), and MLflow casts JSON numbers to the signature's uint8 before any model code
sees them, so 0.5 became 0 and a 5,000-image request was computed. Here the signature declares no
input schema (the input example shows the contract) and `check_images` refuses, in one line,
what is not a batch of raw 0-255 RGB images of at most `CIFAR_SERVE_MAX_IMAGES` images.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

MAX_IMAGES_VARIABLE = "CIFAR_SERVE_MAX_IMAGES"
DEFAULT_MAX_IMAGES = 1024
IMAGE_SHAPE = (32, 32, 3)
# Images per graph call: bounds the activations' memory (6 test-time views of 64 images) whatever
# the request's size, and is large enough that a call's fixed cost is small per image.
CHUNK = 64
KERAS_ARTIFACT = "keras_model"


class RequestRefused(MlflowException):
    """A request the model will not compute: HTTP 400 with the reason as its whole message.

    MLflow's scoring server rewrites an MlflowException's message to quote the whole request
    before the reason, over two lines; the reason alone is what a client needs.
    """

    def __init__(self, reason: str) -> None:
        self._reason = reason
        super().__init__(reason, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._reason

    @message.setter
    def message(self, _: str) -> None:
        pass


def max_images() -> int:
    value = os.environ.get(MAX_IMAGES_VARIABLE, str(DEFAULT_MAX_IMAGES))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{MAX_IMAGES_VARIABLE} must be a whole number >= 1, got {value!r}")
    return int(value)


def check_images(images: Any, limit: int) -> np.ndarray:
    """`images` as uint8, or RequestRefused saying what is wrong and what to send instead."""
    if isinstance(images, dict) and len(images) == 1:
        images = next(iter(images.values()))
    if hasattr(images, "to_numpy"):  # a DataFrame: `dataframe_split` or `instances` JSON
        raise RequestRefused('send {"inputs": [...]}: images shaped (N, 32, 32, 3), not a table')
    try:
        images = np.asarray(images)
    except ValueError:
        images = np.asarray([], dtype=object)
    if images.dtype == object or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
        shape = "ragged" if images.dtype == object else str(tuple(images.shape))
        raise RequestRefused(f"images must be shaped (N, 32, 32, 3), got {shape}")
    if len(images) == 0:
        raise RequestRefused("the request holds no images")
    if len(images) > limit:
        raise RequestRefused(
            f"a request holds at most {limit} images, this one {len(images)}: split it "
            f"(or raise {MAX_IMAGES_VARIABLE} where the server starts)"
        )
    if images.dtype.kind not in "iuf":
        raise RequestRefused(f"pixels must be numbers 0-255, got {images.dtype}")
    if images.dtype.kind == "f" and not np.all(np.isfinite(images) & (images == np.round(images))):
        raise RequestRefused("pixels must be whole numbers 0-255 (raw RGB, not scaled to 0-1)")
    low, high = images.min(), images.max()
    if low < 0 or high > 255:
        raise RequestRefused(f"pixels must be 0-255, got values from {low:g} to {high:g}")
    return images.astype(np.uint8, copy=False)


class ServedClassifier(PythonModel):
    """Class probabilities for raw uint8 images, in the order of the metadata's `class_names`."""

    # MLflow validates `predict`'s type hints when this class is defined and warns (through a
    # filter of its own, so callers cannot silence it) that there are none; hints would make it
    # infer an input schema, which this model must not have. MLflow's own switch to skip that.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import keras
        import tensorflow as tf

        self.limit = max_images()
        model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)
        # One traced graph for every batch size; no predict loop, no callbacks, no progress bar.
        self.call = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec((None, *IMAGE_SHAPE), tf.uint8)],
        )
        self.call(tf.zeros((1, *IMAGE_SHAPE), tf.uint8))  # trace now, not in the first request

    def predict(self, context, model_input, params=None) -> np.ndarray:
        images = check_images(model_input, self.limit)
        parts = [np.asarray(self.call(images[i : i + CHUNK]), np.float32) for i in range(0, len(images), CHUNK)]
        return np.concatenate(parts)


set_model(ServedClassifier())

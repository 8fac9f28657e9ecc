"""Test-time views inside the exported model: what evaluate scores is what users are served.

A model with views predicts the mean of its classifier's probabilities over several
versions of each image (mirrored, shifted a pixel). The views are a graph of built-in
Keras layers around the trained classifier, so `keras.models.load_model`, MLflow's pyfunc
and `mlflow models serve` run them without this package, and evaluate's test accuracy is
the served model's. Each view is an exact pixel permutation: a fixed 0/1 matrix applied by
a frozen `Dense` layer along one image axis (`Permute` brings that axis last).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from cifar_pipeline.core.datasets import IMAGE_SHAPE

SIDE = IMAGE_SHAPE[0]
# (mirrored, shift) per view; a shift of s moves the content s pixels down and right with
# mirrored borders, as airbench's test-time translation does.
VIEWS = {
    "none": ((False, 0),),
    "flip": ((False, 0), (True, 0)),
    "flip_translate": ((False, 0), (True, 0), (False, 1), (True, 1), (False, -1), (True, -1)),
}


def permutation(source_of: list[int]) -> np.ndarray:
    """The matrix M with (row @ M)[i] = row[source_of[i]]."""
    matrix = np.zeros((SIDE, SIDE), np.float32)
    matrix[source_of, np.arange(SIDE)] = 1.0
    return matrix


def mirror_matrix() -> np.ndarray:
    return permutation([SIDE - 1 - i for i in range(SIDE)])


def shift_matrix(shift: int) -> np.ndarray:
    """Output pixel i takes input pixel i - shift, reflected at the border (-1 -> 1, 32 -> 30)."""

    def reflect(i: int) -> int:
        return -i if i < 0 else 2 * (SIDE - 1) - i if i >= SIDE else i

    return permutation([reflect(i - shift) for i in range(SIDE)])


def along_axis(x, matrix: np.ndarray, axis: int, name: str):
    """Apply `matrix` along image axis 1 (rows) or 2 (columns) of an NHWC tensor."""
    order = (1, 3, 2) if axis == 2 else (3, 2, 1)  # bring that axis last; each order is its own inverse
    mix = layers.Dense(SIDE, use_bias=False, trainable=False, name=f"{name}_matrix", dtype="float32")
    x = layers.Permute(order, name=f"{name}_to")(x)
    x = mix(x)
    mix.set_weights([matrix])
    return layers.Permute(order, name=f"{name}_back")(x)


def view(x, mirrored: bool, shift: int, index: int):
    if shift:
        x = along_axis(x, shift_matrix(shift), 1, f"view{index}_rows")
        x = along_axis(x, shift_matrix(shift), 2, f"view{index}_cols")
    if mirrored:
        x = along_axis(x, mirror_matrix(), 2, f"view{index}_mirror")
    return x


def with_test_views(model: keras.Model, views: str) -> keras.Model:
    """`model` itself for "none"; else a model averaging its probabilities over the views."""
    if views == "none":
        return model
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    pixels = layers.Identity(name="pixels", dtype="float32")(inputs)
    outputs = [model(view(pixels, mirrored, shift, index)) for index, (mirrored, shift) in enumerate(VIEWS[views])]
    if views == "flip_translate":
        # airbench's weights: the unshifted pair 1/2, the four shifted views 1/8 each.
        outputs = [
            layers.Average(name="mean_unshifted", dtype="float32")(outputs[:2]),
            layers.Average(name="mean_shifted", dtype="float32")(outputs[2:]),
        ]
    mean = layers.Average(name="mean_over_views", dtype="float32")(outputs)
    return keras.Model(inputs, mean, name=f"{model.name}_{views}")

"""The seed's VGG-style network, built from params, and the wrapper users get.

Training runs on normalised float32 images (the normalize stage's output); the model
that is saved and logged wraps the same classifier behind a `Normalization` layer
holding the training split's statistics, so it takes raw 0-255 pixels: what a user has.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from cifar_pipeline.datasets import IMAGE_SHAPE
from cifar_pipeline.normalize import ChannelStats
from cifar_pipeline.params import ModelParams


def conv_block(x, filters: int, dropout: float, activation: str, index: int):
    """conv-BN-conv-BN-maxpool-dropout, the seed's repeating unit."""
    for conv in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", activation=activation, name=f"block{index}_conv{conv}")(x)
        x = layers.BatchNormalization(name=f"block{index}_bn{conv}")(x)
    x = layers.MaxPooling2D(name=f"block{index}_pool")(x)
    return layers.Dropout(dropout, name=f"block{index}_dropout")(x)


def build_classifier(params: ModelParams, num_classes: int) -> keras.Model:
    """Normalised image in, class probabilities out (2,235,946 weights for the seed on CIFAR-10)."""
    inputs = keras.Input(IMAGE_SHAPE, name="normalized_image")
    x = inputs
    for index, (filters, dropout) in enumerate(zip(params.filters, params.dropouts, strict=True), start=1):
        x = conv_block(x, filters, dropout, params.activation, index)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(params.dense_units, activation=params.activation, name="dense")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="classifier")


def with_normalization(classifier: keras.Model, stats: ChannelStats) -> keras.Model:
    """Raw pixels (uint8 or float 0-255) in, around an uncompiled copy of the classifier.

    The copy drops the training compile state (optimizer, the project's own loss class), so
    the saved and MLflow-logged model loads with plain Keras or `mlflow.pyfunc`, without
    this package installed.
    """
    trained = classifier
    classifier = keras.Model.from_config(trained.get_config())  # clone_model keeps the compile state
    classifier.set_weights(trained.get_weights())
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    normalize = layers.Normalization(
        axis=-1, mean=list(stats.mean), variance=list(np.square(stats.std)), name="normalize", dtype="float32"
    )
    x = normalize(inputs)
    return keras.Model(inputs, classifier(x), name="cifar_model")

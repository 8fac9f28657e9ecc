"""The seed's VGG-style network behind a `Normalization` layer: one graph, trained and served.

The first layer holds the training split's channel statistics (the normalize stage's
output), so the model takes raw 0-255 pixels, uint8 or float: the training data, the
evaluate stage's test images and a user's images all go through the same graph, and no
normalised copy of the data is ever stored.
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


def build_classifier(params: ModelParams, num_classes: int, stats: ChannelStats) -> keras.Model:
    """Raw pixels in, class probabilities out (2,235,946 trainable weights for the seed on CIFAR-10).

    Normalisation runs in float32 whatever the precision policy: bfloat16 has 8 bits of
    mantissa, too few for pixel values before they are centred.
    """
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = layers.Normalization(
        axis=-1, mean=list(stats.mean), variance=list(np.square(stats.std)), name="normalize", dtype="float32"
    )(inputs)
    for index, (filters, dropout) in enumerate(zip(params.filters, params.dropouts, strict=True), start=1):
        x = conv_block(x, filters, dropout, params.activation, index)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(params.dense_units, activation=params.activation, name="dense")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="cifar_model")


def exportable(classifier: keras.Model) -> keras.Model:
    """The trained model without its training compile state (optimizer, the project's loss class).

    Same layers and weights, so the same predictions; it loads with plain Keras or
    `mlflow.pyfunc` without this package installed.
    """
    model = keras.Model.from_config(classifier.get_config())  # clone_model would keep the compile state
    model.set_weights(classifier.get_weights())
    return model

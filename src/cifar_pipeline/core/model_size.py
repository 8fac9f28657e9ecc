"""The size of the params' network, counted without building it: params.yaml is checked
before TensorFlow is imported, and a model too big to train is refused there."""

from __future__ import annotations

from typing import Protocol


class NetworkShape(Protocol):
    """What the count reads of `params.ModelParams` (a protocol, so this module imports nothing of params)."""

    kind: str
    filters: tuple[int, ...]
    dense_units: int
    widths: tuple[int, ...]
    bn_scale: bool
    whiten_bias_epochs: int


def model_weights(model: NetworkShape, num_classes: int) -> int:
    """Weights (trainable and BatchNormalization's) of `model.build_classifier`, without building it."""
    if model.kind == "airbench":
        return airbench_weights(model, num_classes)
    total, channels, side = 0, 3, 32
    for filters in model.filters:
        total += (9 * channels + 1) * filters + (9 * filters + 1) * filters + 2 * 4 * filters
        channels, side = filters, side // 2
    flat = side * side * channels
    return total + (flat + 1) * model.dense_units + (model.dense_units + 1) * num_classes


WHITENING_FILTERS = 24  # a 2x2x3 patch has 12 dimensions; each eigenvector and its negative


def airbench_weights(model: NetworkShape, num_classes: int) -> int:
    """The patch-whitening convolution (with a bias when it trains one), three groups of two bias-free convs with their
    BatchNormalization (4 weights a channel with a learned scale, 3 without), a bias-free head."""
    per_bn = 4 if model.bn_scale else 3
    total, channels = 12 * WHITENING_FILTERS + (WHITENING_FILTERS if model.whiten_bias_epochs else 0), WHITENING_FILTERS
    for width in model.widths:
        total += 9 * channels * width + 9 * width * width + 2 * per_bn * width
        channels = width
    return total + channels * num_classes

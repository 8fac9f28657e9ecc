"""The trained model as it leaves training: without its compile state, BatchNormalization
remeasured after weight averaging, wrapped in the test-time views."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from cifar_pipeline.core.params import TrainParams
from cifar_pipeline.data.channel_stats import ChannelStats
from cifar_pipeline.training.input_pipeline import steps_per_epoch, training_dataset
from cifar_pipeline.training.model import without_compile_state
from cifar_pipeline.training.views import with_test_views

REFRESH_BATCHES = 100


def refresh_batchnorm_statistics(model: keras.Model, batches: tf.data.Dataset, count: int) -> None:
    """Recompute BatchNormalization's running statistics as the plain mean over `count` batches.

    Weight averaging (`use_ema`) averages only trainable weights: the running statistics
    left in BatchNormalization were measured with the last weights, not the averaged ones.
    One forward pass in training mode per batch, each layer's momentum set so that the
    running value becomes the mean of the batches seen so far.
    """
    norms = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    try:
        for seen, (images, _labels) in enumerate(batches.take(count)):
            for layer in norms:
                layer.momentum = seen / (seen + 1)
            model(images, training=True)
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum


def build_final_model(
    classifier: keras.Model, settings: TrainParams, train: tuple[np.ndarray, np.ndarray], stats: ChannelStats
) -> keras.Model:
    """What is saved, logged, evaluated and served: the trained classifier without its compile
    state, BatchNormalization statistics remeasured if its weights were averaged, wrapped in
    the params' test-time views."""
    model = without_compile_state(classifier)
    if settings.ema_momentum:
        images, labels = train
        batches = training_dataset(images, labels, settings.batch_size, settings.augment, settings.seed, stats.mean)
        refresh_batchnorm_statistics(
            model, batches, min(REFRESH_BATCHES, steps_per_epoch(len(images), settings.batch_size))
        )
    return with_test_views(model, settings.model.test_views)

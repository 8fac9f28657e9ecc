"""tf.data pipelines: shuffled index batches gathered from in-memory uint8 arrays, augmented per batch.

Shuffling indices instead of images keeps one copy of the data in memory, as uint8 (a
quarter of float32); batches become float only after gathering. Augmentation runs once
per batch (Keras preprocessing layers are batch-aware), not once per image. The model
normalises its own input, so the pipeline feeds raw 0-255 pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from cifar_pipeline.core.params import AugmentParams


def _options() -> tf.data.Options:
    options = tf.data.Options()
    # With autotune on, closing an iterator waits for the autotune thread's sleep: a stall
    # of tens of seconds at every epoch end on small CPUs, for no speed-up (docs/speed.md).
    options.autotune.enabled = False
    options.deterministic = True
    return options


def augmenter(params: AugmentParams, seed: int, fill: Sequence[float]) -> Callable[[tf.Tensor], tf.Tensor]:
    """Random horizontal flip, then a random shift up to `shift` px.

    With `params.fill` "mean" the uncovered border is `fill`, the training split's mean
    colour: the seed shifted normalised images with zero fill, which is that colour.
    RandomTranslation fills with one constant for every channel, so the shift runs on
    centred pixels (fill 0) and the mean is added back. "reflect" mirrors the pixels next
    to the border into it instead (airbench's reflect-padded crops), so no flat band is
    left for the network to learn.
    """
    # float32 whatever the global precision policy: pixel values need more than bfloat16's 8 bits.
    flip = keras.layers.RandomFlip("horizontal", seed=seed, dtype="float32") if params.flip else None
    shift = None
    if params.shift:
        fraction = params.shift / 32
        shift = keras.layers.RandomTranslation(
            fraction,
            fraction,
            fill_mode="constant" if params.fill == "mean" else "reflect",
            fill_value=0.0,
            interpolation="nearest",
            seed=seed + 1,
            dtype="float32",
        )
    mean = tf.constant(fill if params.fill == "mean" else (0.0, 0.0, 0.0), tf.float32)

    def augment(images: tf.Tensor) -> tf.Tensor:
        x = tf.cast(images, tf.float32)
        if flip is not None:
            x = flip(x, training=True)
        if shift is not None:
            x = shift(x - mean, training=True) + mean
        return x

    return augment


def batch_bounds(count: int, batch_size: int, replicas: int = 1) -> list[tuple[int, int]]:
    """(start, stop) of each batch in one pass over `count` images: `batch_size` each, the last
    one partial, except that a last batch of fewer images than `replicas` joins the one before.

    A strategy splits every batch over its replicas; a replica left with no image fails inside
    BatchNormalization ("Incompatible shapes: [0,32,32,3]"). A batch of 129 over 3 replicas is
    fine (43 each); 30 images in batches of 29 over 3 would end on one image.
    """
    starts = list(range(0, count, batch_size))
    if len(starts) > 1 and count - starts[-1] < replicas:
        starts.pop()
    return list(zip(starts, [*starts[1:], count][: len(starts)], strict=True))


def steps_per_epoch(count: int, batch_size: int, replicas: int = 1) -> int:
    """Batches in one pass over `count` images (`batch_bounds`)."""
    return len(batch_bounds(count, batch_size, replicas))


def batched(order: tf.data.Dataset, count: int, batch_size: int, replicas: int) -> tf.data.Dataset:
    """Each pass of `order` (a permutation of range(count)) cut at `batch_bounds`."""
    bounds = np.asarray(batch_bounds(count, batch_size, replicas), np.int64).reshape(-1, 2)
    cuts = tf.data.Dataset.from_tensor_slices((bounds[:, 0], bounds[:, 1]))
    return order.batch(count).flat_map(lambda indices: cuts.map(lambda start, stop: indices[start:stop]))


def batch_gatherer(images: np.ndarray, labels: np.ndarray) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """A tf.data map from a batch of indices to (images, labels), read by numpy from the arrays as given.

    The arrays are typically the split's memory-mapped `.npy` files, so the data is never
    copied into TensorFlow: `tf.constant` of a numpy array holds two copies of it, which put
    the train stage over its memory budget at full scale (docs/speed.md).
    """
    targets = np.asarray(labels, dtype=np.int32)
    image_dtype = tf.as_dtype(images.dtype)

    def take(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(images[indices]), targets[indices]

    def gather(indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x, y = tf.numpy_function(take, [indices], [image_dtype, tf.int32], stateful=False)
        x.set_shape([None, *images.shape[1:]])
        y.set_shape([None, *targets.shape[1:]])
        return x, y

    return gather


def training_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    augment: AugmentParams,
    seed: int,
    fill: Sequence[float],
    replicas: int = 1,
) -> tf.data.Dataset:
    """An endless stream of float32 0-255 batches; pass `steps_per_epoch(len(images), batch_size)` to `fit`.

    Each epoch is one reshuffled pass, batched before repeating so no batch straddles two
    epochs. Repeating keeps one iterator for the whole fit instead of tearing the pipeline
    down and refilling it at every epoch boundary, time that is otherwise spent outside
    steady batches at each epoch's start (docs/speed.md).
    """
    gather = batch_gatherer(images, labels)
    transform = augmenter(augment, seed, fill)

    def augmented(indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x, y = gather(indices)
        return transform(x), y

    order = tf.data.Dataset.range(len(images)).shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = (
        batched(order, len(images), batch_size, replicas).map(augmented, num_parallel_calls=1).repeat().prefetch(2)
    )
    return dataset.with_options(_options())


def evaluation_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, replicas: int = 1) -> tf.data.Dataset:
    """The images in order, in batches, as stored (uint8 for the pipeline's splits)."""
    order = tf.data.Dataset.range(len(images))
    dataset = batched(order, len(images), batch_size, replicas).map(batch_gatherer(images, labels))
    return dataset.prefetch(2).with_options(_options())

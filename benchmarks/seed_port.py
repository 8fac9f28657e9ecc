"""A literal Keras 3 port of the classroom seed script: the baseline the pipeline must beat.

Kept as the seed wrote it, bugs included, so "at least as good as the seed" is measured
against the seed and not against a cleaned-up version of it:
- normalisation loops over `range(0, 2)`: red and green are standardised with the training
  images' statistics, blue stays raw 0-255 floats (the seed's code is not in this repository;
  this follows the project's design notes, read literally: nothing is divided by 255 first);
- the learning-rate "schedule" takes `(self, epoch)`, so Keras passes the epoch as `self`
  and the current rate as `epoch`, no branch ever fires and the rate stays 0.005;
- `ImageDataGenerator(width_shift_range=4, height_shift_range=4)`: an integer range, which
  Keras reads as whole-pixel shifts drawn from {-3, ..., 3} (0 twice as likely);
- one-hot labels with categorical cross-entropy, a `Sequential` model, float32 throughout.
Only what a benchmark needs differs: the train/validation split and the test images come
from the caller (the same for every contender; the seed's own split was unseeded), and
the epoch count and random seed are arguments, and oneDNN kernels are on as in the
train stage (the same arithmetic, faster on AMD CPUs where TensorFlow leaves them off).

`SeedPortOptions` switches single ingredients to the pipeline's, for the ablations in
benchmarks/accuracy.py; its defaults are the literal port.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from keras import layers


@dataclass(frozen=True)
class SeedPortOptions:
    normalize_channels: int = 2  # the seed's range(0, 2); 3 = every channel, like the pipeline
    augment: str = "imagedatagenerator"  # or "pipeline": the train stage's tf.data flip + shift


def build_model(num_classes: int) -> keras.Model:
    """The seed's network: four conv-BN-conv-BN-maxpool-dropout blocks, Dense(1024), softmax."""
    model = keras.Sequential()
    model.add(keras.Input((32, 32, 3)))
    for filters, dropout in ((32, 0.25), (64, 0.35), (128, 0.45), (256, 0.35)):
        model.add(layers.Conv2D(filters, (3, 3), padding="same", activation="relu"))
        model.add(layers.BatchNormalization())
        model.add(layers.Conv2D(filters, (3, 3), padding="same", activation="relu"))
        model.add(layers.BatchNormalization())
        model.add(layers.MaxPooling2D(pool_size=(2, 2)))
        model.add(layers.Dropout(dropout))
    model.add(layers.Flatten())
    model.add(layers.Dense(1024, activation="relu"))
    model.add(layers.Dense(num_classes, activation="softmax"))
    return model


def lr_schedule(self, epoch):
    """The seed's bug 2, kept: a method lifted out of its class. Keras calls it as
    f(epoch, lr), so `self` is the epoch and `epoch` the rate (0.005): nothing fires."""
    lrate = 0.005
    if epoch > 50:
        lrate = 0.0025
    if epoch > 100:
        lrate = 0.00125
    if epoch > 150:
        lrate = 0.000625
    return lrate


def normalize(x_train: np.ndarray, x_val: np.ndarray, x_test: np.ndarray, channels: int):
    """The seed's normalisation: statistics of the training images, then `range(0, 2)`."""
    x_train, x_val, x_test = (x.astype("float32") for x in (x_train, x_val, x_test))
    mean = np.mean(x_train, axis=(0, 1, 2))
    std = np.std(x_train, axis=(0, 1, 2))
    for i in range(0, channels):
        x_train[:, :, :, i] = (x_train[:, :, :, i] - mean[i]) / std[i]
        x_val[:, :, :, i] = (x_val[:, :, :, i] - mean[i]) / std[i]
        x_test[:, :, :, i] = (x_test[:, :, :, i] - mean[i]) / std[i]
    return x_train, x_val, x_test


def train_seed_port(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    x_test: np.ndarray,
    epochs: int,
    seed: int,
    num_classes: int,
    options: SeedPortOptions = SeedPortOptions(),
    callbacks: list | None = None,
) -> tuple[keras.Model, keras.callbacks.History, np.ndarray]:
    """Train as the seed did; return the model, its history and the test probabilities."""
    keras.utils.set_random_seed(seed)
    x_train, x_val, x_test = normalize(x_train, x_val, x_test, options.normalize_channels)
    y_train_1h = keras.utils.to_categorical(y_train, num_classes)
    y_val_1h = keras.utils.to_categorical(y_val, num_classes)

    model = build_model(num_classes)
    model.compile(
        loss="categorical_crossentropy",
        optimizer=keras.optimizers.Adam(learning_rate=0.005),
        metrics=["accuracy", keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy")],
    )
    batch_size = 128
    if options.augment == "imagedatagenerator":
        datagen = tf.keras.preprocessing.image.ImageDataGenerator(
            horizontal_flip=True, width_shift_range=4, height_shift_range=4, fill_mode="constant", cval=0
        )
        datagen.fit(x_train)
        train_data = datagen.flow(x_train, y_train_1h, batch_size=batch_size, seed=seed)
        steps = {}
    else:
        from cifar_pipeline.input_pipeline import steps_per_epoch, training_dataset
        from cifar_pipeline.params import AugmentParams

        # normalised images: zero fill is the mean colour, as in the seed
        train_data = training_dataset(
            x_train, y_train_1h, batch_size, AugmentParams(flip=True, shift=4), seed, fill=(0.0, 0.0, 0.0)
        )
        train_data = train_data.map(lambda x, y: (x, tf.cast(y, "float32")))  # it yields int32 labels
        steps = {"steps_per_epoch": steps_per_epoch(len(x_train), batch_size)}
    history = model.fit(
        train_data,
        epochs=epochs,
        validation_data=(x_val, y_val_1h),
        callbacks=[keras.callbacks.LearningRateScheduler(lr_schedule), *(callbacks or [])],
        verbose=2,
        **steps,
    )
    return model, history, model.predict(x_test, batch_size=500, verbose=0)

"""A literal Keras 3 port of the classroom seed script (../shared/seed/), the baseline to beat.

Ported line by line from the seed's text, bugs included, so "better than the seed" is
measured against the seed and not against a cleaned-up reading of it:
- `X /= 255`, then the fixed constants mu = [0.4914, 0.4822, 0.4465] and
  std = [0.2023, 0.1994, 0.2010] applied in a loop over `range(0, 2)`: red and green are
  standardised, blue stays in 0-1;
- `lr_adaptive(self, epoch)` handed to `LearningRateScheduler`, which calls it as
  f(epoch, lr): "self" is the epoch and "epoch" the rate 0.005, so no branch fires;
- one-hot labels, `categorical_crossentropy`, `Adam(0.005)`, batch 128;
- `ImageDataGenerator(horizontal_flip=True, fill_mode='constant', width_shift_range=4,
  height_shift_range=4)` fitted on the training images, `steps_per_epoch` =
  len(X_train) / batch_size (a float: Keras 2 ran whole batches until it passed it);
- the functional model from `all_conv_block`, float32 throughout.
What a benchmark must differ in: the train/validation split and test images come from
the caller (the same for every contender; the seed's split was unseeded), the epoch count
and random seed are arguments, the seed's removed `fit_generator` is `fit`, and `compile`
names its metrics (Keras 3 reads a third positional argument as `loss_weights`).

`SeedPortOptions` switches single bugs off, for the ablations in benchmarks/accuracy.py;
its defaults are the literal port.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from keras.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, Input, MaxPooling2D
from keras.models import Model

# Parameters, as the seed sets them
batch_size = 128
learning_rate = 0.005
MU = [0.4914, 0.4822, 0.4465]  # from kuangliu/pytorch-cifar#19, as the seed cites
STD = [0.2023, 0.1994, 0.2010]


@dataclass(frozen=True)
class SeedPortOptions:
    normalize_channels: int = 2  # the seed's range(0, 2); 3 = every channel (bug 1 fixed)
    schedule_fixed: bool = False  # True: lr_adaptive as intended, called with the epoch (bug 2 fixed)


def lr_adaptive(self, epoch):
    """The seed's function, kept as written: Keras calls it as f(epoch, lr)."""
    lr = learning_rate
    if epoch > 20:
        lr = learning_rate / 10
    elif epoch > 40:
        lr = learning_rate / 20
    return lr


def lr_intended(epoch, lr):
    """What the seed meant: the epoch as the argument (its `elif` still never fires)."""
    return lr_adaptive(None, epoch)


def normalize(X: np.ndarray, channels: int = 2) -> np.ndarray:
    X = X.astype("float32")
    X /= 255
    for i in range(0, channels):
        X[:, :, :, i] = (X[:, :, :, i] - MU[i]) / STD[i]
    return X


def one_hot_encoding(data, numclass):
    targets = np.array(data).reshape(-1)
    return np.eye(numclass)[targets]


def convconv(filters, kernel_size, strides):
    return Conv2D(filters, kernel_size, strides=strides, padding="same", activation="relu")


def all_conv_block(filters, dropout, input):
    x = convconv(filters, [3, 3], 1)(input)
    x = BatchNormalization()(x)
    x = convconv(filters, [3, 3], 1)(x)
    x = BatchNormalization()(x)
    x = MaxPooling2D(2, strides=2)(x)
    x = Dropout(dropout)(x)
    return x


def build_model(numclass: int) -> keras.Model:
    input = Input(shape=(32, 32, 3))
    x = all_conv_block(32, 0.25, input)
    x = all_conv_block(64, 0.35, x)
    x = all_conv_block(128, 0.45, x)
    x = all_conv_block(256, 0.35, x)
    x = Flatten()(x)
    x = Dense(1024, activation="relu")(x)
    y = Dense(numclass, activation="softmax")(x)
    return Model(inputs=input, outputs=y)


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
    X_train, X_val, X_test = (normalize(x, options.normalize_channels) for x in (x_train, x_val, x_test))
    Y_train = one_hot_encoding(y_train, num_classes)
    Y_val = one_hot_encoding(y_val, num_classes)
    model = build_model(num_classes)
    optim = keras.optimizers.Adam(learning_rate)
    # The seed passes metrics third; Keras 3's third parameter is loss_weights, so by name here.
    # Its CIFAR-100 script adds top-5; metrics do not change training.
    model.compile(
        optim,
        "categorical_crossentropy",
        metrics=["accuracy", keras.metrics.TopKCategoricalAccuracy(5, "top5_accuracy")],
    )
    datagen = tf.keras.preprocessing.image.ImageDataGenerator(
        horizontal_flip=True, fill_mode="constant", width_shift_range=4, height_shift_range=4
    )
    datagen.fit(X_train)
    history = model.fit(
        datagen.flow(X_train, Y_train, batch_size=batch_size, seed=seed),
        steps_per_epoch=math.ceil(len(X_train) / batch_size),
        epochs=epochs,
        validation_data=(X_val, Y_val),
        callbacks=[
            keras.callbacks.LearningRateScheduler(lr_intended if options.schedule_fixed else lr_adaptive),
            *(callbacks or []),
        ],
        verbose=2,
    )
    return model, history, model.predict(X_test, batch_size=500, verbose=0)

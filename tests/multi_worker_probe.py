"""One worker of a 2-worker MultiWorkerMirroredStrategy `fit` on a tiny model, without the
project's workaround: tells whether Keras still has keras-team/keras#20585.

Exit 0: fit worked upstream; 3: it failed (the error's first line is printed).
"""

import sys

import keras
import numpy as np
import tensorflow as tf

strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
x = np.ones((32, 4), np.float32)
y = np.zeros(32, np.int32)
try:
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat(), epochs=1, steps_per_epoch=2, verbose=0)
except Exception as err:  # what the upstream bug raises
    print(f"FAILED {type(err).__name__}: {str(err).splitlines()[0][:200]}", flush=True)
    sys.exit(3)
print("FIT WORKED", flush=True)

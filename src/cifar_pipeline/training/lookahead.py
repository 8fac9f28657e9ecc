"""airbench's Lookahead: a slow copy of the weights that the fast ones are pulled back to.

Every `EVERY` steps the slow copy moves toward the current weights and the weights are
reset to it; how far depends on the step: `BASE_DECAY * (step / total)^3`, so early steps
keep nearly the fast weights and the last ones average over many steps. When `fit` ends the
weights become the slow copy. BatchNormalization's running statistics are averaged with
them, as airbench averages every float tensor of its model.

Keras's `use_ema` differs: a constant momentum and no reset of the fast weights, so it is kept
as the separate `train.ema_momentum`. The slow copy lives in this callback, not in the
checkpoint: a resumed run starts it again from the checkpoint's weights.
"""

from __future__ import annotations

import keras
import tensorflow as tf

EVERY = 5
BASE_DECAY = 0.95**EVERY


class Lookahead(keras.callbacks.Callback):
    def __init__(self, total_steps: int) -> None:
        super().__init__()
        self.total_steps = max(total_steps, 1)
        self.fast: list = []
        self.slow: list[tf.Variable] = []

    def on_train_begin(self, logs=None) -> None:
        # Every float weight, BatchNormalization's statistics included; listed once per fit.
        self.fast = [w for w in self.model.weights if w.dtype in ("float32", "float16", "bfloat16")]
        self.slow = [tf.Variable(tf.convert_to_tensor(w.value), trainable=False) for w in self.fast]

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step % EVERY:
            return
        decay = BASE_DECAY * min(step / self.total_steps, 1.0) ** 3
        for slow, weight in zip(self.slow, self.fast, strict=True):
            slow.assign(slow + (1.0 - decay) * (tf.cast(weight.value, slow.dtype) - slow))
            weight.assign(tf.cast(slow, weight.dtype))

    def on_train_end(self, logs=None) -> None:
        for slow, weight in zip(self.slow, self.fast, strict=True):
            weight.assign(tf.cast(slow, weight.dtype))

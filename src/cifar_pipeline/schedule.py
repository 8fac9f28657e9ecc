"""The learning-rate schedule as a plain function of the epoch index.

The seed's schedule never fired: it was written as `def f(self, epoch)` and handed to
`LearningRateScheduler`, which called it as `f(epoch, lr)`, so "self" got the epoch and
"epoch" got the current rate, and every comparison against it was false. Here the
function takes exactly what Keras passes (the 0-based epoch) and is unit-tested.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from cifar_pipeline.params import ScheduleParams


def learning_rate_fn(initial: float, params: ScheduleParams) -> Callable[[int], float]:
    """`step`: multiply by `factor` at each boundary epoch (0-based); `constant`: never change."""

    def rate(epoch: int) -> float:
        if params.kind == "constant":
            return initial
        steps = sum(1 for boundary in params.boundaries if epoch >= boundary)
        return initial * params.factor**steps

    return rate


def scheduler_callback(initial: float, params: ScheduleParams) -> keras.callbacks.LearningRateScheduler:
    schedule = learning_rate_fn(initial, params)
    return keras.callbacks.LearningRateScheduler(lambda epoch, _current: schedule(epoch))

import keras
import numpy as np
import pytest

from cifar_pipeline.params import ScheduleParams
from cifar_pipeline.schedule import learning_rate_fn, scheduler_callback

STEP = ScheduleParams(kind="step", boundaries=(50, 100, 150), factor=0.5)


@pytest.mark.parametrize(
    ("epoch", "rate"),
    [(0, 0.005), (49, 0.005), (50, 0.0025), (99, 0.0025), (100, 0.00125), (150, 0.000625), (199, 0.000625)],
)
def test_step_schedule_values(epoch, rate):
    assert learning_rate_fn(0.005, STEP)(epoch) == pytest.approx(rate)


def test_constant_schedule_is_the_seeds_actual_run():
    constant = ScheduleParams(kind="constant", boundaries=(50,), factor=0.5)
    assert {learning_rate_fn(0.005, constant)(e) for e in range(200)} == {0.005}


def test_the_callback_really_changes_the_optimizer_rate():
    """The seed's bug was a schedule Keras never applied; check the rate inside fit."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    seen = []
    probe = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
    )
    schedule = ScheduleParams(kind="step", boundaries=(1, 2), factor=0.1)
    x = np.zeros((4, 2), np.float32)
    model.fit(x, np.zeros(4), epochs=3, verbose=0, callbacks=[scheduler_callback(0.1, schedule), probe])
    assert seen == pytest.approx([0.1, 0.01, 0.001])

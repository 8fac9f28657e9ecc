"""The training recipe built from params: the rates it produces, the optimizer, the loss."""

import dataclasses

import keras
import numpy as np
import pytest

from cifar_pipeline.core.params import ScheduleParams
from cifar_pipeline.training.optimizers import ConvMuon, VariableRateSGD
from cifar_pipeline.training.recipe import (
    SparseCrossentropy,
    build_optimizer,
    compile_classifier,
    last_step_rate,
    learning_rate_schedule,
)
from testkit.project import seed_params

STEP = ScheduleParams(kind="step", boundaries=(50, 100, 150), factor=0.5, warmup_fraction=0.0)
SPE = 10  # steps per epoch


def rate_at(schedule, step: int) -> float:
    return schedule if isinstance(schedule, float) else float(keras.ops.convert_to_numpy(schedule(step)))


@pytest.mark.parametrize(
    ("epoch", "rate"),
    [(0, 0.005), (49, 0.005), (50, 0.0025), (99, 0.0025), (100, 0.00125), (150, 0.000625), (199, 0.000625)],
)
def test_step_schedule_changes_at_the_first_step_of_each_boundary_epoch(epoch, rate):
    schedule = learning_rate_schedule(0.005, STEP, SPE, 200)
    assert rate_at(schedule, epoch * SPE) == pytest.approx(rate)  # the epoch's first step
    assert rate_at(schedule, epoch * SPE + SPE - 1) == pytest.approx(rate)  # and its last


def test_constant_schedule_is_the_seeds_actual_run():
    constant = dataclasses.replace(STEP, kind="constant")
    assert learning_rate_schedule(0.005, constant, SPE, 200) == 0.005


def test_cosine_decays_from_the_peak_to_zero():
    cosine = dataclasses.replace(STEP, kind="cosine")
    schedule = learning_rate_schedule(0.01, cosine, SPE, 10)
    assert rate_at(schedule, 0) == pytest.approx(0.01)
    assert rate_at(schedule, 50) == pytest.approx(0.005)
    assert rate_at(schedule, 100) == pytest.approx(0.0, abs=1e-9)


def test_cosine_with_warmup_rises_linearly_then_decays():
    one_cycle = dataclasses.replace(STEP, kind="cosine", warmup_fraction=0.2)  # 20 of 100 steps
    schedule = learning_rate_schedule(0.01, one_cycle, SPE, 10)
    assert rate_at(schedule, 0) == pytest.approx(0.0)
    assert rate_at(schedule, 10) == pytest.approx(0.005)
    assert rate_at(schedule, 20) == pytest.approx(0.01)
    assert rate_at(schedule, 60) == pytest.approx(0.005)  # half-way through the 80 decay steps
    assert rate_at(schedule, 100) == pytest.approx(0.0, abs=1e-9)


def test_the_schedule_really_drives_the_optimizer_inside_fit():
    """The seed's bug was a schedule Keras never applied: record the rate of every batch."""
    settings = seed_params().train
    settings = dataclasses.replace(
        settings, epochs=3, lr_schedule=dataclasses.replace(STEP, boundaries=(1, 2), factor=0.1)
    )
    settings = dataclasses.replace(settings, learning_rate=0.1, jit_compile=False)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
    compile_classifier(model, settings, steps_per_epoch=2)
    seen, ended = [], []
    probe = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda batch, logs: seen.append(
            float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        ),
        on_epoch_end=lambda epoch, logs: ended.append(last_step_rate(model.optimizer)),
    )
    x = np.zeros((4, 2), np.float32)
    model.fit(x, np.zeros(4, np.int32), batch_size=2, epochs=3, verbose=0, callbacks=[probe])
    assert seen == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert ended == pytest.approx([0.1, 0.01, 0.001])


def test_the_logged_rate_is_the_inner_optimizers_under_float16_loss_scaling():
    """A GPU's float16 policy wraps the optimizer in Keras's LossScaleOptimizer, whose own
    `_learning_rate` is 0.0: the logged rate was then the schedule at the next step."""
    settings = dataclasses.replace(
        seed_params().train,
        epochs=2,
        learning_rate=0.1,
        jit_compile=False,
        lr_schedule=dataclasses.replace(STEP, boundaries=(1,), factor=0.1),
    )
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3), keras.layers.Softmax(dtype="float32")])
        compile_classifier(model, settings, steps_per_epoch=2)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        ended = []
        probe = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda e, logs: ended.append(last_step_rate(model.optimizer))
        )
        model.fit(
            np.zeros((4, 2), np.float32), np.zeros(4, np.int32), batch_size=2, epochs=2, verbose=0, callbacks=[probe]
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert ended == pytest.approx([0.1, 0.01])


@pytest.mark.parametrize(
    ("name", "decay", "kind"),
    [
        ("adam", 0.0, keras.optimizers.Adam),
        ("adamw", 0.01, keras.optimizers.AdamW),
        ("sgd", 5e-4, VariableRateSGD),  # Keras's SGD with airbench's per-variable rules
        ("muon", 0.01, ConvMuon),  # Keras's Muon, conv kernels included
    ],
)
def test_optimizers(name, decay, kind):
    settings = dataclasses.replace(seed_params().train, optimizer=name, weight_decay=decay)
    optimizer = build_optimizer(settings, steps_per_epoch=SPE)
    assert type(optimizer) is kind
    assert (optimizer.weight_decay or 0.0) == pytest.approx(decay)
    if name in ("sgd", "muon"):
        assert optimizer.nesterov and optimizer.momentum == pytest.approx(settings.momentum)


def test_label_smoothing_matches_keras_categorical_crossentropy():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    labels = np.array([0, 1])
    one_hot = np.eye(3, dtype=np.float32)[labels]
    for smoothing in (0.0, 0.1):
        ours = SparseCrossentropy(smoothing)(labels, probabilities)
        keras_own = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)(one_hot, probabilities)
        assert float(ours) == pytest.approx(float(keras_own), rel=1e-6)
    plain = keras.losses.SparseCategoricalCrossentropy()(labels, probabilities)
    assert float(SparseCrossentropy(0.0)(labels, probabilities)) == pytest.approx(float(plain), rel=1e-6)
    assert float(SparseCrossentropy(0.1)(labels, probabilities)) > float(plain)


@pytest.mark.parametrize("kind", ["cosine", "triangular"])
def test_a_compiled_model_with_a_schedule_and_smoothing_saves_and_loads(tmp_path, kind):
    """Checkpoints save the optimizer: the schedule and loss must come back from disk."""
    settings = seed_params().train
    settings = dataclasses.replace(
        settings,
        label_smoothing=0.1,
        optimizer="sgd",
        weight_decay=5e-4,
        jit_compile=False,
        lr_schedule=dataclasses.replace(STEP, kind=kind, warmup_fraction=0.25),
        epochs=4,
    )
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, activation="softmax")])
    compile_classifier(model, settings, steps_per_epoch=2)
    model.fit(np.zeros((4, 2), np.float32), np.zeros(4, np.int32), batch_size=2, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.loss.label_smoothing == pytest.approx(0.1)
    assert int(loaded.optimizer.iterations) == 2
    assert last_step_rate(loaded.optimizer) == pytest.approx(last_step_rate(model.optimizer))


def test_triangular_rises_linearly_then_falls_linearly_to_zero():
    triangle = dataclasses.replace(STEP, kind="triangular", warmup_fraction=0.2)  # 20 of 100 steps
    schedule = learning_rate_schedule(0.4, triangle, SPE, 10)
    rates = [rate_at(schedule, step) for step in (0, 10, 20, 60, 100)]
    assert rates == pytest.approx([0.0, 0.2, 0.4, 0.2, 0.0], abs=1e-7)


def test_weight_averaging_puts_the_average_in_place_when_fit_ends():
    """Keras's use_ema: during fit the weights train; at its end they become the moving average."""
    settings = dataclasses.replace(
        seed_params().train,
        optimizer="sgd",
        ema_momentum=0.5,
        learning_rate=0.1,
        momentum=0.0,
        jit_compile=False,
        lr_schedule=dataclasses.replace(STEP, kind="constant", boundaries=()),
    )
    optimizer = build_optimizer(settings, steps_per_epoch=SPE)
    assert optimizer.use_ema and optimizer.ema_momentum == pytest.approx(0.5)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    model.compile(optimizer=optimizer, loss="mse")
    # d(mse)/dw = 2 (w x - y) x = -2 for w = 0, x = 1, y = 1: with rate 0.1, w goes 0 -> 0.2 -> 0.36
    live = []
    probe = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: live.append(float(model.weights[0][0, 0]))
    )
    model.fit(np.ones((2, 1)), np.ones((2, 1)), batch_size=1, epochs=1, verbose=0, callbacks=[probe])
    assert live == pytest.approx([0.2, 0.36])
    # Keras starts the average at the first step's weights (0.2), then 0.5 * 0.2 + 0.5 * 0.36 = 0.28
    assert float(model.weights[0][0, 0]) == pytest.approx(0.28)
    assert not build_optimizer(seed_params().train, steps_per_epoch=SPE).use_ema

"""The training recipe from params: optimizer, learning-rate schedule and loss, all Keras's own.

Every schedule is a Keras `LearningRateSchedule` evaluated at the optimizer's step counter:
nothing to call with the wrong arguments (the seed's callback was, and never fired:
docs/accuracy.md), per-step for warm-up and cosine, and saved with the optimizer, so a
resumed run continues the schedule where it stopped.
"""

from __future__ import annotations

import keras

from cifar_pipeline.core.metric_names import TOP5_ACCURACY
from cifar_pipeline.core.params import ScheduleParams, TrainParams
from cifar_pipeline.training.model import HEAD_LAYER, OUTPUT_LAYER, WHITENING_LAYER
from cifar_pipeline.training.optimizers import ConvMuon, VariableRateSGD


def learning_rate_schedule(
    peak: float, params: ScheduleParams, steps_per_epoch: int, epochs: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The rate for each optimizer step; epochs in params become steps here.

    `constant`: `peak` throughout (the seed's actual run). `step`: multiply by `factor`
    from the first step of each boundary epoch (0-based). `cosine`: cosine decay from
    `peak` to 0 over the run; with `warmup_fraction`, a linear rise from 0 to `peak` over
    that share of the run's steps first: the one-cycle shape (Keras's CosineDecay with
    `warmup_target`). `triangular`: the same rise, then a straight line down to 0 at the
    last step (airbench's shape). They scale with `epochs`, so a 15-epoch try anneals as
    fully as a 200-epoch run, where fixed `step` boundaries at epoch 50+ would never fire.
    """
    if params.kind == "constant" or (params.kind == "step" and not params.boundaries):
        return peak
    if params.kind == "step":
        # PiecewiseConstantDecay switches *after* a boundary step; the optimizer evaluates
        # the rate at its step count before the update, so step b*n is epoch b's first.
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            boundaries=[b * steps_per_epoch - 1 for b in params.boundaries],
            values=[peak * params.factor**i for i in range(len(params.boundaries) + 1)],
        )
    total = epochs * steps_per_epoch
    warmup = round(params.warmup_fraction * total)
    if params.kind == "triangular":
        return Triangular(peak, warmup, total)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else peak,
        decay_steps=max(total - warmup, 1),
        alpha=0.0,
        warmup_target=peak if warmup else None,
        warmup_steps=warmup,
    )


@keras.saving.register_keras_serializable(package="cifar_pipeline")
class Triangular(keras.optimizers.schedules.LearningRateSchedule):
    """Linear from 0 to `peak` over `warmup_steps`, then linear to 0 at `total_steps`.

    Keras has no linear warm-up with a linear decay; saved with the optimizer, so a resumed
    run continues it. Only checkpoints hold it: the exported model has no optimizer.
    """

    def __init__(self, peak: float, warmup_steps: int, total_steps: int) -> None:
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        up = step / max(self.warmup_steps, 1)
        down = (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1)
        return self.peak * keras.ops.clip(keras.ops.minimum(up, down), 0.0, 1.0)

    def get_config(self) -> dict:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


def build_optimizer(settings: TrainParams, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam (the seed's), AdamW, SGD with Nesterov momentum, or Muon; weight decay is decoupled.

    With `ema_momentum`, the optimizer keeps a moving average of the weights (Keras's
    `use_ema`) and puts it in their place when `fit` ends; the model is saved with it.
    airbench's per-variable rules (a multiple of the BatchNormalization biases' rate, the
    whitening bias frozen after some epochs) are `VariableRates` on sgd and muon.
    """
    rate = learning_rate_schedule(settings.learning_rate, settings.lr_schedule, steps_per_epoch, settings.epochs)
    ema = {"use_ema": True, "ema_momentum": settings.ema_momentum} if settings.ema_momentum else {}
    if settings.optimizer == "adam":
        return keras.optimizers.Adam(rate, **ema)
    if settings.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=settings.weight_decay, **ema)
    rules = variable_rules(settings, steps_per_epoch)
    if settings.optimizer == "muon":
        return ConvMuon(
            rate,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
            adam_weight_decay=settings.weight_decay,
            exclude_layers=[HEAD_LAYER, OUTPUT_LAYER, WHITENING_LAYER],
            **rules,
            **ema,
        )
    return VariableRateSGD(
        rate, momentum=settings.momentum, nesterov=True, weight_decay=settings.weight_decay or None, **rules, **ema
    )


def variable_rules(settings: TrainParams, steps_per_epoch: int) -> dict:
    """`VariableRates` arguments: BatchNormalization biases (`beta`) at `bn_bias_lr_scale` times
    the rate; with a trained whitening bias, the whitening kernel frozen from the start and its
    bias from the end of `whiten_bias_epochs`."""
    rules: dict = {"rate_scales": {}, "frozen_from": {}}
    if settings.bn_bias_lr_scale != 1.0:
        rules["rate_scales"][r"_bn\d/beta$"] = settings.bn_bias_lr_scale
    if settings.model.whiten_bias_epochs:
        rules["frozen_from"][rf"^{WHITENING_LAYER}/kernel$"] = 0
        rules["frozen_from"][rf"^{WHITENING_LAYER}/bias$"] = settings.model.whiten_bias_epochs * steps_per_epoch
    return rules


@keras.saving.register_keras_serializable(package="cifar_pipeline")
class SparseCrossentropy(keras.losses.Loss):
    """Cross-entropy on integer labels with optional label smoothing.

    Keras's SparseCategoricalCrossentropy has no `label_smoothing`; this one-hots inside
    the loss so the input pipeline, the metrics and the saved model keep integer labels.
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "sparse_crossentropy", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        classes = keras.ops.shape(y_pred)[-1]
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        target = keras.ops.one_hot(labels, classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(target, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def compile_classifier(model: keras.Model, settings: TrainParams, steps_per_epoch: int) -> None:
    """Named metric objects, so Keras logs and MLflow keys match for both datasets.

    Keras wraps the optimizer in loss scaling itself under a mixed_float16 policy.
    """
    model.compile(
        jit_compile=settings.jit_compile,
        optimizer=build_optimizer(settings, steps_per_epoch),
        loss=SparseCrossentropy(settings.label_smoothing),
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=5, name=TOP5_ACCURACY),
        ],
    )


def last_step_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The rate the optimizer used for its latest step (what an epoch ended on).

    `optimizer.learning_rate` evaluates a schedule at the *next* step, which at an epoch
    boundary is already the following epoch's rate. Under float16 Keras wraps the optimizer in
    a LossScaleOptimizer, whose own `_learning_rate` is a placeholder 0.0: read the inner one.
    """
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    schedule = optimizer._learning_rate  # Keras keeps the schedule object here; the property evaluates it
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        step = max(int(keras.ops.convert_to_numpy(optimizer.iterations)) - 1, 0)
        return float(keras.ops.convert_to_numpy(schedule(step)))
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))

"""The rules between params fields: each a named function that raises one line naming the keys
and the fix. `params.RULES` says which section each runs on, once its fields are read."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cifar_pipeline.core.model_size import model_weights
from cifar_pipeline.core.param_readers import ParamsError, fail

MAX_MODEL_WEIGHTS = 100_000_000  # a 100 M-weight model needs ~1.6 GB with Adam's state

if TYPE_CHECKING:
    from cifar_pipeline.core.params import ExportParams, ModelParams, ScheduleParams, SplitParams, TrainParams


def adam_has_no_weight_decay(train: TrainParams) -> None:
    if train.weight_decay and train.optimizer == "adam":
        fail(
            f"train.weight_decay is {train.weight_decay}, but",
            "adam has no decoupled weight decay; set train.optimizer to adamw (or sgd), or train.weight_decay to 0",
        )


def weight_averaging_averages(train: TrainParams) -> None:
    if train.ema_momentum == 0.0:
        fail(
            "train.ema_momentum is 0,",
            "which averages nothing; set null to train without weight averaging, or a momentum such as 0.99",
        )


def one_weight_average(train: TrainParams) -> None:
    if train.lookahead and train.ema_momentum:
        fail(
            "train.lookahead and train.ema_momentum are both set;",
            "each averages the weights: set train.ema_momentum to null, or train.lookahead to false",
        )


def bias_rates_need_sgd(train: TrainParams) -> None:
    if train.bn_bias_lr_scale != 1.0 and train.optimizer != "sgd":
        fail(
            f"train.bn_bias_lr_scale is {train.bn_bias_lr_scale}, but",
            f"only sgd scales the BatchNormalization biases' rate ({train.optimizer} adapts each rate itself); "
            "set train.optimizer to sgd, or train.bn_bias_lr_scale to 1",
        )


def determinism_needs_float32(train: TrainParams) -> None:
    if train.deterministic and train.mixed_precision not in ("auto", False):
        fail(
            f"train.deterministic is true, but train.mixed_precision is {str(train.mixed_precision).lower()};",
            "repeatable runs compute in float32 (bfloat16 and float16 results depend on the CPU or GPU): "
            "set train.mixed_precision to auto (float32 then) or false, or train.deterministic to false",
        )


def boundaries_increase(schedule: ScheduleParams) -> None:
    if list(schedule.boundaries) != sorted(set(schedule.boundaries)):
        fail("train.lr_schedule.boundaries", f"must be strictly increasing, got {list(schedule.boundaries)}")


def only_some_schedules_warm_up(schedule: ScheduleParams) -> None:
    if schedule.warmup_fraction and schedule.kind not in ("cosine", "triangular"):
        fail(
            f"train.lr_schedule.warmup_fraction is {schedule.warmup_fraction}, but",
            "only the cosine and triangular schedules warm up; set train.lr_schedule.kind to one of them, "
            "or warmup_fraction to 0",
        )


def three_airbench_groups(model: ModelParams) -> None:
    if len(model.widths) != 3:
        fail("train.model.widths", f"must list the airbench network's 3 group widths, got {list(model.widths)}")


def blocks_fit_the_image(model: ModelParams) -> None:
    if len(model.filters) > 5:
        fail(
            f"train.model.filters has {len(model.filters)} blocks;",
            "at most 5 fit a 32x32 image (each block halves it)",
        )


def one_dropout_per_block(model: ModelParams) -> None:
    if len(model.dropouts) != len(model.filters):
        fail(
            "train.model.dropouts",
            f"must be a list with one rate per block ({len(model.filters)}), got {list(model.dropouts)!r}",
        )
    if any(not 0.0 <= rate < 1.0 for rate in model.dropouts):
        fail("train.model.dropouts", f"must each be in [0, 1), got {list(model.dropouts)}")


def each_format_once(export: ExportParams) -> None:
    if len(set(export.formats)) != len(export.formats):
        fail("export.formats", f"lists a format twice: {list(export.formats)}")


# --- rules across sections: the split and the network against each listed dataset


def minimum_train_images(num_classes: int, val_fraction: float) -> int:
    """The smallest `split.max_train_images` that leaves a training and a validation image per class."""
    count = 2 * num_classes
    while round(count * val_fraction) < num_classes or count - round(count * val_fraction) < num_classes:
        count += 1
    return count


def subsample_fits(split: SplitParams, dataset: str, num_classes: int) -> None:
    if split.max_train_images is None:
        return
    needed = minimum_train_images(num_classes, split.val_fraction)
    if split.max_train_images < needed:
        raise ParamsError(
            f"params.yaml: split.max_train_images is {split.max_train_images}, but {dataset} "
            f"({num_classes} classes) with split.val_fraction {split.val_fraction} needs at least {needed} "
            f"for one training and one validation image per class; raise it, or set it to null for all images"
        )


def model_fits(model: ModelParams, num_classes: int) -> None:
    weights = model_weights(model, num_classes)
    if weights > MAX_MODEL_WEIGHTS:
        raise ParamsError(
            f"params.yaml: train.model has {weights:,} weights ({weights * 4 / 1e9:.1f} GB in float32, several "
            f"times that to train); the limit is {MAX_MODEL_WEIGHTS:,}: lower train.model.dense_units or filters"
        )

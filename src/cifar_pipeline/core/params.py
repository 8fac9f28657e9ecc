"""The one loader of `params.yaml`: parse, validate everything, return frozen dataclasses.

Every stage calls `load_params` before doing any work, so a typo or an out-of-range
value stops the pipeline with one message naming the key and what is allowed, instead
of surfacing as a shape error an hour into training. Every key must be present:
`params.yaml` is the single source of truth, and DVC tracks exactly those keys.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml import YAMLError as _YAMLError

from cifar_pipeline.core.datasets import SPECS
from cifar_pipeline.core.errors import PipelineError
from cifar_pipeline.core.files import atomic_file

DEFAULT_PATH = Path("params.yaml")
LR_SCHEDULES = ("step", "constant", "cosine", "triangular")
MODEL_KINDS = ("seed", "airbench")
FILLS = ("mean", "reflect")
TEST_VIEWS = ("none", "flip", "flip_translate")
OPTIMIZERS = ("adam", "adamw", "sgd")
DISTRIBUTE = ("auto", "none", "mirrored", "multi_worker")
MAX_SEED = 2**32 - 1  # NumPy's legacy seeding, which Keras uses, takes 32 bits
MAX_MODEL_WEIGHTS = 100_000_000  # the seed's network has 2.2 M; 100 M need ~1.6 GB with Adam's state


class ParamsError(PipelineError, ValueError):
    """params.yaml is unreadable or holds a key or value the pipeline cannot use."""


@dataclass(frozen=True)
class DataParams:
    url: str
    md5: str
    label_mode: str


@dataclass(frozen=True)
class SplitParams:
    val_fraction: float
    seed: int
    max_train_images: int | None
    max_test_images: int | None


@dataclass(frozen=True)
class ModelParams:
    filters: tuple[int, ...]
    dropouts: tuple[float, ...]
    dense_units: int
    activation: str
    # The defaults are the seed network's, so code that names only the fields above builds it.
    kind: str = "seed"
    widths: tuple[int, ...] = (64, 256, 256)
    bn_momentum: float = 0.99
    bn_scale: bool = True
    test_views: str = "none"


@dataclass(frozen=True)
class ScheduleParams:
    kind: str
    boundaries: tuple[int, ...]
    factor: float
    warmup_fraction: float


@dataclass(frozen=True)
class AugmentParams:
    flip: bool
    shift: int
    fill: str = "mean"


@dataclass(frozen=True)
class TrainParams:
    seed: int
    epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    weight_decay: float
    momentum: float
    label_smoothing: float
    ema_momentum: float | None
    jit_compile: str | bool
    mixed_precision: str | bool
    distribute: str
    lr_schedule: ScheduleParams
    augment: AugmentParams
    model: ModelParams


@dataclass(frozen=True)
class RegisterParams:
    min_improvement: float  # a new version takes champion only by at least this much test accuracy


@dataclass(frozen=True)
class Params:
    datasets: tuple[str, ...]
    data: dict[str, DataParams]
    split: SplitParams
    train: TrainParams
    register: RegisterParams

    def dataset(self, name: str) -> DataParams:
        if name not in self.datasets:
            raise ParamsError(
                f"params.yaml: dataset '{name}' is not in 'datasets' {list(self.datasets)}; "
                f"add it there (dvc.yaml generates one set of stages per listed dataset)"
            )
        return self.data[name]


def load_params(path: Path | str = DEFAULT_PATH) -> Params:
    """Read and validate the whole params file; raise `ParamsError` on the first problem."""
    path = Path(path)
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run from the project root, where params.yaml lives") from None
    except UnicodeDecodeError as err:
        raise ParamsError(
            f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); save it as UTF-8"
        ) from None
    except _YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ParamsError(f"{path} is not valid YAML{at}: {getattr(err, 'problem', err)}; fix the syntax") from None
    return parse_params(raw)


# Bounds on a params or dvc.yaml file: a few kB and a few hundred values in practice. An alias
# bomb (anchors referring to anchors) is small on disk and loads as shared objects, but expands
# to billions of values for whatever walks it; nesting thousands deep overflows the parser.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 64


def read_yaml(text: str, name: str = "params.yaml") -> Any:
    """YAML as DVC reads it (ruamel.yaml, YAML 1.2), so both agree on every value, within bounds.

    PyYAML follows YAML 1.1, where `1e-3` is a string; DVC records it as 0.001.
    """
    if len(text) > MAX_YAML_BYTES:
        raise ParamsError(f"{name} is {len(text):,} characters, over the {MAX_YAML_BYTES:,} a params file may hold")
    try:
        value = YAML(typ="safe").load(text)
    except RecursionError:
        raise ParamsError(_too_deep(name)) from None
    _check_bounds(value, name)
    return value


def _too_deep(name: str) -> str:
    return f"{name} nests deeper than {MAX_YAML_DEPTH} levels; a params file needs a few: flatten it"


def _check_bounds(value: Any, name: str) -> None:
    """Count every value as a reader would see it (an alias's target once per use)."""
    pending, seen = [(value, 1)], 0
    while pending:
        node, depth = pending.pop()
        seen += 1
        if seen > MAX_YAML_VALUES:
            raise ParamsError(
                f"{name} expands to more than {MAX_YAML_VALUES:,} values (anchors and aliases that repeat each "
                f"other?); a params file holds a few hundred: write the values out"
            )
        if depth > MAX_YAML_DEPTH:
            raise ParamsError(_too_deep(name))
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        pending.extend((child, depth + 1) for child in children)


CHECKED_MARKER = (
    "params.yaml passed validation. This file's content never changes: it only orders the\n"
    "check_params stage before every per-dataset stage (see dvc.yaml).\n"
)


def mark_checked(marker: Path) -> None:
    """Write the check_params stage's output; `load_params` has already validated everything.

    DVC has no order-only dependencies, so the check stage needs an output that the first
    per-dataset stage depends on. Its content is fixed so that rerunning the check (the
    `datasets` list or this module changed) never makes a dataset's stages rerun.
    """
    with atomic_file(marker) as tmp:
        tmp.write_text(CHECKED_MARKER, encoding="utf-8")


def parse_params(raw: Any) -> Params:
    top = _mapping(raw, "", {"datasets", "data", "split", "train", "register"})
    datasets = _dataset_list(top["datasets"])
    data_raw = _mapping(top["data"], "data", set(SPECS), required=set(datasets))
    data = {name: _data(value, name) for name, value in data_raw.items()}
    split = _split(top["split"])
    train = _train(top["train"])
    for name in datasets:
        classes = SPECS[name].num_classes[data[name].label_mode]
        _check_subsample(split, name, classes)
        _check_model_size(train.model, classes)
    return Params(datasets=datasets, data=data, split=split, train=train, register=_register(top["register"]))


def minimum_train_images(num_classes: int, val_fraction: float) -> int:
    """The smallest `split.max_train_images` that leaves a training and a validation image per class."""
    count = 2 * num_classes
    while round(count * val_fraction) < num_classes or count - round(count * val_fraction) < num_classes:
        count += 1
    return count


def _check_subsample(split: SplitParams, dataset: str, num_classes: int) -> None:
    if split.max_train_images is None:
        return
    needed = minimum_train_images(num_classes, split.val_fraction)
    if split.max_train_images < needed:
        raise ParamsError(
            f"params.yaml: split.max_train_images is {split.max_train_images}, but {dataset} "
            f"({num_classes} classes) with split.val_fraction {split.val_fraction} needs at least {needed} "
            f"for one training and one validation image per class; raise it, or set it to null for all images"
        )


def model_weights(model: ModelParams, num_classes: int) -> int:
    """Weights (trainable and BatchNormalization's) of `model.build_classifier`, without building it."""
    if model.kind == "airbench":
        return airbench_weights(model, num_classes)
    total, channels, side = 0, 3, 32
    for filters in model.filters:
        total += (9 * channels + 1) * filters + (9 * filters + 1) * filters + 2 * 4 * filters
        channels, side = filters, side // 2
    flat = side * side * channels
    return total + (flat + 1) * model.dense_units + (model.dense_units + 1) * num_classes


WHITENING_FILTERS = 24  # a 2x2x3 patch has 12 dimensions; each eigenvector and its negative


def airbench_weights(model: ModelParams, num_classes: int) -> int:
    """The bias-free patch-whitening convolution, three groups of two bias-free convs with their
    BatchNormalization (4 weights a channel with a learned scale, 3 without), a bias-free head."""
    per_bn = 4 if model.bn_scale else 3
    total, channels = 12 * WHITENING_FILTERS, WHITENING_FILTERS
    for width in model.widths:
        total += 9 * channels * width + 9 * width * width + 2 * per_bn * width
        channels = width
    return total + channels * num_classes


def _check_model_size(model: ModelParams, num_classes: int) -> None:
    weights = model_weights(model, num_classes)
    if weights > MAX_MODEL_WEIGHTS:
        raise ParamsError(
            f"params.yaml: train.model has {weights:,} weights ({weights * 4 / 1e9:.1f} GB in float32, several "
            f"times that to train); the limit is {MAX_MODEL_WEIGHTS:,}: lower train.model.dense_units or filters"
        )


def flatten(params: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for MLflow, e.g. `train.model.filters` -> "[32, 64, 128, 256]"."""
    items: dict[str, Any] = {}
    values = (
        {f.name: getattr(params, f.name) for f in fields(params)} if hasattr(params, "__dataclass_fields__") else params
    )
    for key, value in values.items():
        name = f"{prefix}{key}"
        if hasattr(value, "__dataclass_fields__") or isinstance(value, dict):
            items.update(flatten(value, f"{name}."))
        else:
            items[name] = list(value) if isinstance(value, tuple) else value
    return items


# --- section parsers -------------------------------------------------------------------


def _dataset_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ParamsError(
            f"params.yaml: 'datasets' must be a non-empty list of dataset names from {sorted(SPECS)}, got {value!r}"
        )
    for name in value:
        if name not in SPECS:
            raise ParamsError(
                f"params.yaml: 'datasets' names unknown dataset {name!r}{_did_you_mean(name, SPECS)}; "
                f"allowed: {sorted(SPECS)}"
            )
    if len(set(value)) != len(value):
        raise ParamsError(f"params.yaml: 'datasets' lists a dataset twice: {value}")
    return tuple(value)


def _data(value: Any, name: str) -> DataParams:
    spec = SPECS[name]
    where = f"data.{name}"
    # Every dataset has label_mode (CIFAR-10's only one is "label"), so the split stage can
    # depend on `data.<d>.label_mode` alone: a new url for the same archive does not rerun it.
    section = _mapping(value, where, {"url", "md5", "label_mode"})
    url = _string(section["url"], f"{where}.url")
    md5 = _string(section["md5"], f"{where}.md5").lower()
    if not re.fullmatch(r"[0-9a-f]{32}", md5):
        raise ParamsError(f"params.yaml: {where}.md5 must be 32 hexadecimal digits, got {section['md5']!r}")
    label_mode = _choice(section["label_mode"], f"{where}.label_mode", spec.label_fields)
    return DataParams(url=url, md5=md5, label_mode=label_mode)


def _split(value: Any) -> SplitParams:
    section = _mapping(value, "split", {"val_fraction", "seed", "max_train_images", "max_test_images"})
    fraction = _number(section["val_fraction"], "split.val_fraction")
    if not 0.0 < fraction < 1.0:
        raise ParamsError(f"params.yaml: split.val_fraction must be between 0 and 1 (exclusive), got {fraction}")
    return SplitParams(
        val_fraction=fraction,
        seed=_integer(section["seed"], "split.seed", minimum=0),
        max_train_images=_optional_integer(section["max_train_images"], "split.max_train_images", minimum=2),
        max_test_images=_optional_integer(section["max_test_images"], "split.max_test_images", minimum=1),
    )


def _train(value: Any) -> TrainParams:
    section = _mapping(
        value,
        "train",
        {
            "seed",
            "epochs",
            "batch_size",
            "optimizer",
            "learning_rate",
            "weight_decay",
            "momentum",
            "label_smoothing",
            "ema_momentum",
            "jit_compile",
            "mixed_precision",
            "distribute",
            "lr_schedule",
            "augment",
            "model",
        },
    )
    rate = _number(section["learning_rate"], "train.learning_rate")
    if rate <= 0:
        raise ParamsError(f"params.yaml: train.learning_rate must be > 0, got {rate}")
    optimizer = _choice(section["optimizer"], "train.optimizer", OPTIMIZERS)
    decay = _fraction(section["weight_decay"], "train.weight_decay")
    if decay and optimizer == "adam":
        raise ParamsError(
            f"params.yaml: train.weight_decay is {decay}, but adam has no decoupled weight decay; "
            f"set train.optimizer to adamw (or sgd), or train.weight_decay to 0"
        )
    return TrainParams(
        seed=_integer(section["seed"], "train.seed", minimum=0, maximum=MAX_SEED),
        epochs=_integer(section["epochs"], "train.epochs", minimum=1),
        batch_size=_integer(section["batch_size"], "train.batch_size", minimum=1),
        optimizer=optimizer,
        learning_rate=rate,
        weight_decay=decay,
        momentum=_fraction(section["momentum"], "train.momentum"),
        label_smoothing=_fraction(section["label_smoothing"], "train.label_smoothing"),
        ema_momentum=_ema(section["ema_momentum"]),
        jit_compile=_auto_or_bool(section["jit_compile"], "train.jit_compile"),
        mixed_precision=_auto_or_bool(section["mixed_precision"], "train.mixed_precision"),
        distribute=_choice(section["distribute"], "train.distribute", DISTRIBUTE),
        lr_schedule=_schedule(section["lr_schedule"]),
        augment=_augment(section["augment"]),
        model=_model(section["model"]),
    )


def _schedule(value: Any) -> ScheduleParams:
    section = _mapping(value, "train.lr_schedule", {"kind", "boundaries", "factor", "warmup_fraction"})
    kind = _choice(section["kind"], "train.lr_schedule.kind", LR_SCHEDULES)
    boundaries = tuple(
        _integer_list(section["boundaries"], "train.lr_schedule.boundaries", minimum=1, allow_empty=True)
    )
    if list(boundaries) != sorted(set(boundaries)):
        raise ParamsError(
            f"params.yaml: train.lr_schedule.boundaries must be strictly increasing, got {list(boundaries)}"
        )
    factor = _number(section["factor"], "train.lr_schedule.factor")
    if not 0.0 < factor <= 1.0:
        raise ParamsError(f"params.yaml: train.lr_schedule.factor must be in (0, 1], got {factor}")
    warmup = _fraction(section["warmup_fraction"], "train.lr_schedule.warmup_fraction")
    if warmup and kind not in ("cosine", "triangular"):
        raise ParamsError(
            f"params.yaml: train.lr_schedule.warmup_fraction is {warmup}, but only the cosine and triangular "
            f"schedules warm up; set train.lr_schedule.kind to one of them, or warmup_fraction to 0"
        )
    return ScheduleParams(kind=kind, boundaries=boundaries, factor=factor, warmup_fraction=warmup)


def _register(value: Any) -> RegisterParams:
    section = _mapping(value, "register", {"min_improvement"})
    margin = _number(section["min_improvement"], "register.min_improvement")
    if not 0.0 < margin < 1.0:  # MLflow's validation needs a positive margin; 0.00001 is "any improvement"
        raise ParamsError(
            f"params.yaml: register.min_improvement must be above 0 and below 1 (a share of the test images, "
            f"e.g. 0.005), got {margin}"
        )
    return RegisterParams(min_improvement=margin)


def _augment(value: Any) -> AugmentParams:
    section = _mapping(value, "train.augment", {"flip", "shift", "fill"})
    return AugmentParams(
        flip=_boolean(section["flip"], "train.augment.flip"),
        shift=_integer(section["shift"], "train.augment.shift", minimum=0, maximum=16),
        fill=_choice(section["fill"], "train.augment.fill", FILLS),
    )


def _ema(value: Any) -> float | None:
    """null: train without weight averaging; else the averaging momentum, e.g. 0.99 (~100 steps)."""
    if value is None:
        return None
    momentum = _fraction(value, "train.ema_momentum")
    if momentum == 0.0:
        raise ParamsError(
            "params.yaml: train.ema_momentum is 0, which averages nothing; set null to train without "
            "weight averaging, or a momentum such as 0.99"
        )
    return momentum


MODEL_KEYS = {
    "kind",
    "filters",
    "dropouts",
    "dense_units",
    "activation",
    "widths",
    "bn_momentum",
    "bn_scale",
    "test_views",
}


def _model(value: Any) -> ModelParams:
    section = _mapping(value, "train.model", MODEL_KEYS)
    widths = tuple(_integer_list(section["widths"], "train.model.widths", minimum=1))
    if len(widths) != 3:
        raise ParamsError(
            f"params.yaml: train.model.widths must list the airbench network's 3 group widths, got {list(widths)}"
        )
    filters = tuple(_integer_list(section["filters"], "train.model.filters", minimum=1))
    if len(filters) > 5:
        raise ParamsError(
            f"params.yaml: train.model.filters has {len(filters)} blocks; "
            f"at most 5 fit a 32x32 image (each block halves it)"
        )
    dropouts = section["dropouts"]
    if not isinstance(dropouts, list) or len(dropouts) != len(filters):
        raise ParamsError(
            f"params.yaml: train.model.dropouts must be a list with one rate per block "
            f"({len(filters)}), got {dropouts!r}"
        )
    rates = tuple(_number(rate, f"train.model.dropouts[{i}]") for i, rate in enumerate(dropouts))
    if any(not 0.0 <= rate < 1.0 for rate in rates):
        raise ParamsError(f"params.yaml: train.model.dropouts must each be in [0, 1), got {list(rates)}")
    activation = _choice(section["activation"], "train.model.activation", ("relu", "elu", "gelu", "swish"))
    return ModelParams(
        filters=filters,
        dropouts=rates,
        dense_units=_integer(section["dense_units"], "train.model.dense_units", minimum=1),
        activation=activation,
        kind=_choice(section["kind"], "train.model.kind", MODEL_KINDS),
        widths=widths,
        bn_momentum=_fraction(section["bn_momentum"], "train.model.bn_momentum"),
        bn_scale=_boolean(section["bn_scale"], "train.model.bn_scale"),
        test_views=_choice(section["test_views"], "train.model.test_views", TEST_VIEWS),
    )


# --- value checkers --------------------------------------------------------------------


def _did_you_mean(key: Any, allowed: Any, prefix: str = "") -> str:
    close = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _mapping(value: Any, where: str, allowed: set[str], required: set[str] | None = None) -> dict[str, Any]:
    label = where or "the top level"
    if not isinstance(value, dict):
        raise ParamsError(f"params.yaml: {label} must be a mapping of keys {sorted(allowed)}, got {value!r}")
    prefix = f"{where}." if where else ""
    for key in value:
        if key not in allowed:
            raise ParamsError(
                f"params.yaml: unknown key '{prefix}{key}'{_did_you_mean(key, allowed, prefix)}; "
                f"allowed keys in {label}: {sorted(allowed)}"
            )
    for key in sorted(allowed if required is None else required):
        if key not in value:
            raise ParamsError(f"params.yaml: missing key '{prefix}{key}'; add it (see the README's params table)")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ParamsError(f"params.yaml: {where} must be a non-empty string, got {value!r}")
    return value.strip()


def _choice(value: Any, where: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ParamsError(
            f"params.yaml: {where} must be one of {list(allowed)}, got {value!r}{_did_you_mean(value, allowed)}"
        )
    return value


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ParamsError(f"params.yaml: {where} must be true or false, got {value!r}")
    return value


def _auto_or_bool(value: Any, where: str) -> str | bool:
    if value == "auto" or isinstance(value, bool):
        return value
    raise ParamsError(f"params.yaml: {where} must be auto, true or false, got {value!r}")


def _integer(value: Any, where: str, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamsError(f"params.yaml: {where} must be an integer, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ParamsError(f"params.yaml: {where} must be an integer {bounds}, got {value}")
    return value


def _optional_integer(value: Any, where: str, minimum: int) -> int | None:
    return None if value is None else _integer(value, where, minimum=minimum)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ParamsError(f"params.yaml: {where} must be a number, got {value!r}")
    return float(value)


def _fraction(value: Any, where: str) -> float:
    """A number in [0, 1): weight decay, momentum, label smoothing, warm-up share."""
    number = _number(value, where)
    if not 0.0 <= number < 1.0:
        raise ParamsError(f"params.yaml: {where} must be at least 0 and below 1, got {number}")
    return number


def _integer_list(value: Any, where: str, minimum: int, allow_empty: bool = False) -> list[int]:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise ParamsError(
            f"params.yaml: {where} must be a {'' if allow_empty else 'non-empty '}list of integers, got {value!r}"
        )
    return [_integer(item, f"{where}[{i}]", minimum=minimum) for i, item in enumerate(value)]

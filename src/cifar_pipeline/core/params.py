"""The one loader of `params.yaml`: parse, validate everything, return frozen dataclasses.

Every stage calls `load_params` before doing any work, so a typo or an out-of-range
value stops the pipeline with one message naming the key and what is allowed, instead
of surfacing as a shape error an hour into training. Every key must be present:
`params.yaml` is the single source of truth, and DVC tracks exactly those keys.

A recipe (recipes.yaml) is a named, complete set of `train` values: `recipe` in params.yaml
names one (or one per dataset), and every train key whose value is the word `recipe` takes the recipe's value, so
one word picks a recipe while any key written out still overrides it (and `dvc exp run -S
train.epochs=12` finds the key it needs). What the stages see is the resolved values.

Each field declares how it is read (a reader from `param_readers`: a type with its range or
choices); a nested dataclass is a section; rules between fields are named functions in
`RULES`, run once the section's fields are read.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cifar_pipeline.core import param_rules
from cifar_pipeline.core.datasets import SPECS
from cifar_pipeline.core.layout import EXPORT_FILES
from cifar_pipeline.core.param_readers import (
    ParamsError,
    Rules,
    auto_or_bool,
    boolean,
    choice,
    declared,
    did_you_mean,
    fraction,
    integer,
    list_of,
    mapping,
    md5,
    number,
    optional,
    precision,
    read_section,
    stored_url,
    text,
)
from cifar_pipeline.core.recipes import RECIPES_FILE, read_recipes, recipe_names, resolve_recipe
from cifar_pipeline.core.yaml_reader import read_yaml_file

DEFAULT_PATH = Path("params.yaml")
MAX_SEED = 2**32 - 1  # NumPy's legacy seeding, which Keras uses, takes 32 bits


# --- the declarations -------------------------------------------------------------------


@dataclass(frozen=True)
class DataParams:
    url: str = declared(stored_url)
    md5: str = declared(md5)
    # Every dataset has label_mode (CIFAR-10's only one is "label"), so the split stage can
    # depend on `data.<d>.label_mode` alone; its choices are the dataset's (see `_data`).
    label_mode: str = declared(text)


@dataclass(frozen=True)
class SplitParams:
    val_fraction: float = declared(number(lambda x: 0.0 < x < 1.0, "between 0 and 1 (exclusive)"))
    seed: int = declared(integer(minimum=0))
    max_train_images: int | None = declared(optional(integer(minimum=2)))
    max_test_images: int | None = declared(optional(integer(minimum=1)))


@dataclass(frozen=True)
class ModelParams:
    filters: tuple[int, ...] = declared(list_of(integer(minimum=1), "integers"))
    dropouts: tuple[float, ...] = declared(list_of(number(), "numbers"))
    dense_units: int = declared(integer(minimum=1))
    activation: str = declared(choice("relu", "elu", "gelu", "swish"))
    kind: str = declared(choice("seed", "airbench"))
    widths: tuple[int, ...] = declared(list_of(integer(minimum=1), "integers"))
    bn_momentum: float = declared(fraction)
    bn_scale: bool = declared(boolean)
    test_views: str = declared(choice("none", "flip", "flip_translate"))
    # airbench's pieces (docs/networks.md).
    dirac_init: bool = declared(boolean)
    whiten_bias_epochs: int = declared(integer(minimum=0))


@dataclass(frozen=True)
class ScheduleParams:
    kind: str = declared(choice("step", "constant", "cosine", "triangular"))
    boundaries: tuple[int, ...] = declared(list_of(integer(minimum=1), "integers", allow_empty=True))
    factor: float = declared(number(lambda x: 0.0 < x <= 1.0, "in (0, 1]"))
    warmup_fraction: float = declared(fraction)


@dataclass(frozen=True)
class AugmentParams:
    flip: bool = declared(boolean)
    shift: int = declared(integer(minimum=0, maximum=16))
    fill: str = declared(choice("mean", "reflect"))


@dataclass(frozen=True)
class TrainParams:
    seed: int = declared(integer(minimum=0, maximum=MAX_SEED))
    epochs: int = declared(integer(minimum=1))
    batch_size: int = declared(integer(minimum=1))
    optimizer: str = declared(choice("adam", "adamw", "sgd", "muon"))
    learning_rate: float = declared(number(lambda x: x > 0, "> 0"))
    weight_decay: float = declared(fraction)
    momentum: float = declared(fraction)
    label_smoothing: float = declared(fraction)
    # null: train without weight averaging; else the averaging momentum, e.g. 0.99 (~100 steps).
    ema_momentum: float | None = declared(optional(fraction))
    jit_compile: str | bool = declared(auto_or_bool)
    mixed_precision: str | bool = declared(precision)
    distribute: str = declared(choice("auto", "none", "mirrored", "multi_worker"))
    lr_schedule: ScheduleParams
    augment: AugmentParams
    model: ModelParams
    # airbench's pieces (docs/networks.md).
    lookahead: bool = declared(boolean)
    # BatchNormalization biases' rate as a multiple of the others' (airbench: 64); sgd only.
    bn_bias_lr_scale: float = declared(number(lambda x: x > 0, "> 0"))
    # TensorFlow's op determinism and float32: two runs of the same params give the same weights.
    deterministic: bool = declared(boolean)


@dataclass(frozen=True)
class RegisterParams:
    # A new version takes champion only by at least this much test accuracy; MLflow's
    # validation needs a positive margin, so 0.00001 is "any improvement".
    min_improvement: float = declared(
        number(lambda x: 0.0 < x < 1.0, "above 0 and below 1 (a share of the test images, e.g. 0.005)")
    )


@dataclass(frozen=True)
class ExportParams:
    # The formats the export stage writes and scores (an empty list: none, only the table's
    # `.keras` row).
    formats: tuple[str, ...] = declared(list_of(choice(*EXPORT_FILES), "format names", allow_empty=True))
    # Training images that set the int8 model's value ranges.
    calibration_images: int = declared(integer(minimum=1))


@dataclass(frozen=True)
class Params:
    recipe: str
    datasets: tuple[str, ...]
    data: dict[str, DataParams]
    split: SplitParams
    train: TrainParams
    export: ExportParams
    register: RegisterParams
    # The train keys params.yaml sets itself instead of taking the recipe's (dotted, sorted).
    recipe_overrides: tuple[str, ...] = ()

    def dataset(self, name: str) -> DataParams:
        if name not in self.datasets:
            raise ParamsError(
                f"params.yaml: dataset '{name}' is not in 'datasets' {list(self.datasets)}; "
                f"add it there (dvc.yaml generates one set of stages per listed dataset)"
            )
        return self.data[name]


# --- rules between fields (core/param_rules.py) ----------------------------------------

RULES: Rules = {
    ExportParams: (param_rules.each_format_once,),
    TrainParams: (
        param_rules.adam_has_no_weight_decay,
        param_rules.weight_averaging_averages,
        param_rules.one_weight_average,
        param_rules.bias_rates_need_sgd,
        param_rules.determinism_needs_float32,
    ),
    ScheduleParams: (param_rules.boundaries_increase, param_rules.only_some_schedules_warm_up),
    ModelParams: (
        param_rules.three_airbench_groups,
        param_rules.blocks_fit_the_image,
        param_rules.one_dropout_per_block,
    ),
}


def _dataset_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ParamsError(
            f"params.yaml: 'datasets' must be a non-empty list of dataset names from {sorted(SPECS)}, got {value!r}"
        )
    for name in value:
        if name not in SPECS:
            raise ParamsError(
                f"params.yaml: 'datasets' names unknown dataset {name!r}{did_you_mean(name, SPECS)}; "
                f"allowed: {sorted(SPECS)}"
            )
    if len(set(value)) != len(value):
        raise ParamsError(f"params.yaml: 'datasets' lists a dataset twice: {value}")
    return tuple(value)


def _data(value: Any, name: str) -> DataParams:
    return read_section(DataParams, value, f"data.{name}", RULES, {"label_mode": choice(*SPECS[name].label_fields)})


def parse_params(raw: Any, recipes: dict[str, Any] | None = None, dataset: str | None = None) -> Params:
    """The validated params as `dataset`'s stages see them (its recipe resolved into `train`);
    every listed dataset's recipe is checked either way. Without `dataset`: the first listed one's.
    `recipes` defaults to the recipes file in the working folder."""
    top = mapping(raw, "", {f.name for f in fields(Params)} - {"recipe_overrides"})
    recipes = read_recipes(RECIPES_FILE) if recipes is None else recipes
    datasets = _dataset_list(top["datasets"])
    names = recipe_names(top["recipe"], recipes, datasets)
    data_raw = mapping(top["data"], "data", set(SPECS), required=set(datasets))
    data = {name: _data(value, name) for name, value in data_raw.items()}
    split = read_section(SplitParams, top["split"], "split", RULES)
    trains = {}
    for name in datasets:
        train_raw, overrides = resolve_recipe(top["train"], recipes[names[name]], names[name])
        train = read_section(TrainParams, train_raw, "train", RULES)
        classes = SPECS[name].num_classes[data[name].label_mode]
        param_rules.subsample_fits(split, name, classes)
        param_rules.model_fits(train.model, classes)
        trains[name] = (train, overrides)
    chosen = dataset if dataset in trains else datasets[0]  # a dataset not listed is refused by `Params.dataset`
    export = read_section(ExportParams, top["export"], "export", RULES)
    register = read_section(RegisterParams, top["register"], "register", RULES)
    return Params(
        recipe=names[chosen],
        datasets=datasets,
        data=data,
        split=split,
        train=trains[chosen][0],
        export=export,
        register=register,
        recipe_overrides=trains[chosen][1],
    )


def load_params(path: Path | str = DEFAULT_PATH, dataset: str | None = None) -> Params:
    """Read and validate the whole params file (and its recipes) as `dataset`'s stages see it;
    raise `ParamsError` on the first problem."""
    path = Path(path)
    raw = read_yaml_file(path, "run from the project root, where params.yaml lives")
    return parse_params(raw, read_recipes(path.parent / RECIPES_FILE), dataset)


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

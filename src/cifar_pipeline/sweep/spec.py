"""sweeps.yaml: named sweeps, each a dataset, a validation metric, a trial count and a search
space over params.yaml keys; read and checked in full before any trial trains.

A sweep varies only the keys it names; every other value comes from params.yaml and its
recipe, so `split.max_train_images: 1000` there makes every trial small. Each candidate value
goes through the same params validation as `dvc repro`, so a choice of the wrong type or a
range outside a key's limits is refused with the params' own message, up front.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifar_pipeline.core.datasets import SPECS
from cifar_pipeline.core.errors import PipelineError
from cifar_pipeline.core.metric_names import LOSS_KEYS, TOP5_ACCURACY
from cifar_pipeline.core.param_readers import ParamsError, did_you_mean
from cifar_pipeline.core.params import DEFAULT_PATH, Params, parse_params
from cifar_pipeline.core.recipes import RECIPES_FILE, read_recipes
from cifar_pipeline.core.yaml_reader import read_yaml_file

SWEEPS_FILE = Path("sweeps.yaml")
METRICS = {"val_accuracy": "maximize", f"val_{TOP5_ACCURACY}": "maximize", LOSS_KEYS[1]: "minimize"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # also a git ref's part: DVC names the experiments after it
KEYS = {"dataset", "metric", "trials", "space", "prune"}
PRUNE_KEYS = {"after_epochs", "startup_trials"}


class SweepError(PipelineError):
    """sweeps.yaml, the sweep's storage or its study cannot be used as given."""


@dataclass(frozen=True)
class Dimension:
    """One key's range (low..high, int or float, maybe log) or its choices."""

    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    integer: bool = False
    choices: tuple[Any, ...] = ()

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices:
            return CategoricalDistribution([encode(choice) for choice in self.choices])
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def described(self) -> dict[str, Any]:
        if self.choices:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}


@dataclass(frozen=True)
class Sweep:
    name: str
    dataset: str
    metric: str
    trials: int
    space: tuple[Dimension, ...]
    prune_after_epochs: int | None  # None: never prune
    prune_startup_trials: int

    @property
    def direction(self) -> str:
        return METRICS[self.metric]

    @property
    def stage(self) -> str:
        return f"train@{self.dataset}"

    def described(self) -> dict[str, Any]:
        """What the study is created with; a study of this name with another description is refused."""
        return {
            "dataset": self.dataset,
            "metric": self.metric,
            "space": {d.key: d.described() for d in self.space},
        }


def encode(value: Any) -> Any:
    """A choice as Optuna stores it: lists (widths) become their JSON text."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def override(key: str, value: Any) -> str:
    """`key=value` as `dvc exp run -S` parses it (Hydra's grammar)."""
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, separators=(",", ":"))
    return f"{key}={text}"


def apply(raw_params: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """params.yaml's raw values with each dotted key of `values` set."""
    changed = copy.deepcopy(raw_params)
    for key, value in values.items():
        *path, last = key.split(".")
        node = changed
        for part in path:
            node = node[part]
        node[last] = value
    return changed


def read_sweep(name: str, folder: Path = Path()) -> tuple[Sweep, dict[str, Any], dict[str, Any]]:
    """The sweep `name` from sweeps.yaml, checked against params.yaml and recipes.yaml (read from
    `folder`); also the raw params and recipes that its trials start from."""
    path = folder / SWEEPS_FILE
    if not path.is_file():
        raise SweepError(f"{SWEEPS_FILE} not found: run from the project root, where sweeps.yaml names the sweeps")
    sweeps = read_yaml_file(path, "")
    if not isinstance(sweeps, dict) or not sweeps:
        raise SweepError(f"{SWEEPS_FILE} must map each sweep name to its definition (dataset, metric, trials, space)")
    if name not in sweeps:
        hint = did_you_mean(name, sweeps)
        raise SweepError(f"{SWEEPS_FILE} has no sweep {name!r}{hint}; its sweeps: {sorted(sweeps)}")
    try:
        raw_params = read_yaml_file(folder / DEFAULT_PATH, "run from the project root, where params.yaml lives")
        recipes = read_recipes(folder / RECIPES_FILE)
        parse_params(raw_params, recipes)
    except ParamsError as err:
        raise SweepError(f"params.yaml must be valid before a sweep: {err}") from None
    return parse_sweep(name, sweeps[name], raw_params, recipes), raw_params, recipes


def parse_sweep(name: str, raw: Any, raw_params: dict[str, Any], recipes: dict[str, Any]) -> Sweep:
    where = f"{SWEEPS_FILE}: {name}"
    if not NAME.fullmatch(str(name)):
        raise SweepError(f"{where}: a sweep name is letters, digits, '-', '_' and '.' (it names DVC experiments)")
    if not isinstance(raw, dict):
        raise SweepError(f"{where} must be a mapping with dataset, metric, trials and space")
    if unknown := sorted(set(raw) - KEYS):
        hint = did_you_mean(unknown[0], KEYS)
        raise SweepError(f"{where}: unknown key {unknown[0]!r}{hint}; allowed: {sorted(KEYS)}")
    if missing := sorted({"dataset", "metric", "trials", "space"} - set(raw)):
        raise SweepError(f"{where}: {missing[0]} is missing; a sweep names dataset, metric, trials and space")
    dataset, metric, trials = raw["dataset"], raw["metric"], raw["trials"]
    if dataset not in SPECS:
        raise SweepError(f"{where}: dataset {dataset!r} is not one of {sorted(SPECS)}{did_you_mean(dataset, SPECS)}")
    if dataset not in raw_params.get("datasets", []):
        raise SweepError(
            f"{where}: dataset {dataset} is not in params.yaml's datasets {raw_params.get('datasets')}; add it there"
        )
    if metric not in METRICS:
        raise SweepError(
            f"{where}: metric {metric!r} is not one of {sorted(METRICS)}{did_you_mean(metric, METRICS)} "
            "(validation metrics, read every epoch)"
        )
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise SweepError(f"{where}: trials must be a positive integer, got {trials!r}")
    space = raw["space"]
    if not isinstance(space, dict) or not space:
        raise SweepError(f"{where}: space must map at least one params.yaml key to its range or choices")
    base = parse_params(raw_params, recipes)
    dimensions = tuple(_dimension(f"{where}: space", k, v, raw_params, recipes, base) for k, v in space.items())
    after, startup = _prune(where, raw.get("prune", {}))
    return Sweep(name, dataset, metric, trials, dimensions, after, startup)


def _prune(where: str, raw: Any) -> tuple[int | None, int]:
    if raw is False:
        return None, 0
    if not isinstance(raw, dict) or set(raw) - PRUNE_KEYS:
        raise SweepError(f"{where}: prune must be false or a mapping with {sorted(PRUNE_KEYS)}")
    values = {"after_epochs": 3, "startup_trials": 4, **raw}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SweepError(f"{where}: prune.{key} must be a whole number >= 0, got {value!r}")
    return values["after_epochs"], values["startup_trials"]


def _current(base: Params, key: str) -> Any:
    node: Any = base
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _dimension(where: str, key: Any, raw: Any, raw_params: dict, recipes: dict, base: Params) -> Dimension:
    key = str(key)
    if key != "recipe" and not key.startswith("train."):
        raise SweepError(
            f"{where}: {key} cannot vary in a sweep: only train.* keys and recipe do (every trial must be "
            "scored on the same validation images)"
        )
    node: Any = raw_params
    for depth, part in enumerate(key.split(".")):
        if not isinstance(node, dict) or part not in node:
            inside = ".".join(key.split(".")[:depth])
            known = node if isinstance(node, dict) else {}
            hint = did_you_mean(part, known, f"{inside}." if inside else "")
            raise SweepError(f"{where}: {key} is not a key of params.yaml{hint}")
        node = node[part]
    if isinstance(node, dict):
        raise SweepError(f"{where}: {key} is a section of params.yaml; name one of its keys")
    if not isinstance(raw, dict):
        raise SweepError(f"{where}: {key} must be {{low: .., high: ..}} or {{choices: [..]}}, got {raw!r}")
    if "choices" in raw:
        dimension = _choices(where, key, raw)
        candidates = list(dimension.choices)
    else:
        dimension = _range(where, key, raw, _current(base, key) if key != "recipe" else None)
        candidates = [dimension.low, dimension.high]
    for value in candidates:
        try:
            parse_params(apply(raw_params, {key: value}), recipes)
        except ParamsError as err:
            problem = str(err).removeprefix("params.yaml: ")
            raise SweepError(f"{where}: {key} = {value!r} is not a valid value: {problem}") from None
    return dimension


def _choices(where: str, key: str, raw: dict) -> Dimension:
    choices = raw["choices"]
    if set(raw) != {"choices"}:
        raise SweepError(f"{where}: {key} gives choices, so nothing else (got {sorted(raw)})")
    if not isinstance(choices, list) or not choices:
        raise SweepError(f"{where}: {key}: choices must be a non-empty list")
    if len({json.dumps(c, sort_keys=True) for c in choices}) != len(choices):
        raise SweepError(f"{where}: {key}: a choice is listed twice in {choices}")
    return Dimension(key, choices=tuple(choices))


def _range(where: str, key: str, raw: dict, current: Any) -> Dimension:
    allowed = {"low", "high", "log", "step"}
    if unknown := sorted(set(raw) - allowed):
        raise SweepError(f"{where}: {key}: unknown key {unknown[0]!r}; a range has {sorted(allowed)}, or give choices")
    if "low" not in raw or "high" not in raw:
        raise SweepError(f"{where}: {key} needs both low and high (or choices)")
    low, high, log, step = raw["low"], raw["high"], raw.get("log", False), raw.get("step")
    for label, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise SweepError(f"{where}: {key}: {label} must be a number, got {value!r}")
    if isinstance(current, bool) or not isinstance(current, int | float):
        raise SweepError(f"{where}: {key} takes {current!r}, not a number: give it choices instead of a range")
    integer = isinstance(current, int)
    if integer and not all(isinstance(v, int) for v in (low, high, step or 1)):
        raise SweepError(f"{where}: {key} is a whole number: low, high and step must be whole numbers")
    if not low < high:
        raise SweepError(f"{where}: {key}: the range {low}..{high} is empty; give low < high")
    if not isinstance(log, bool):
        raise SweepError(f"{where}: {key}: log must be true or false")
    if log and low <= 0:
        raise SweepError(f"{where}: {key}: a log range needs low > 0, got {low}")
    if log and step is not None:
        raise SweepError(f"{where}: {key}: a log range takes no step")
    if step is not None and not 0 < step <= high - low:
        raise SweepError(f"{where}: {key}: step must be > 0 and at most high - low")
    return Dimension(key, low=low, high=high, log=log, step=step, integer=integer)

"""How the benchmarks resolve a contender's training values: the project's params.yaml and
recipes.yaml, with `dvc exp run -S`-style overrides, through the params loader itself.

Named recipes live in recipes.yaml only; a contender names one (`recipe=fast`).
"""

from __future__ import annotations

from benchmarks.common import ROOT
from cifar_pipeline.core.params import TrainParams, parse_params
from cifar_pipeline.core.recipes import RECIPES_FILE, read_recipes
from cifar_pipeline.core.yaml_reader import read_yaml

# The seed network with params-only changes chosen on validation (issue 7's screening): a
# contender of the 15-epoch benchmark's history, not a recipe offered to users.
SEED_NETWORK_TUNED: list[str] = [
    "recipe=seed",
    "train.optimizer=sgd",
    "train.learning_rate=0.05",
    "train.weight_decay=0.0005",
    "train.model.dropouts=[0.1,0.15,0.2,0.15]",
    "train.lr_schedule.kind=triangular",
]


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`a.b.c=value` with a YAML value, like `dvc exp run -S`; the key must already exist."""
    for override in overrides:
        key, _, value = override.partition("=")
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise KeyError(f"override {override!r}: {key} is not in params.yaml")
        node[leaf] = read_yaml(value)
    return raw


def train_settings(overrides: list[str]) -> TrainParams:
    """The train values the project's params.yaml resolves to with `overrides` applied."""
    raw = apply_overrides(read_yaml((ROOT / "params.yaml").read_text()), overrides)
    return parse_params(raw, read_recipes(ROOT / RECIPES_FILE)).train

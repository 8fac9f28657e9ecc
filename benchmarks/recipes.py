"""The recipes the README quotes, as `dvc exp run -S` overrides, and how to apply them.

One place for both: the accuracy benchmark trains them, the speed benchmark times them,
and a test keeps the README's command lines equal to these lists.
"""

from __future__ import annotations

import yaml

# The seed network's fast recipe: params only, chosen on validation accuracy (screening.md).
FAST_RECIPE: list[str] = [
    "train.optimizer=sgd",
    "train.learning_rate=0.05",
    "train.weight_decay=0.0005",
    "train.model.dropouts=[0.1,0.15,0.2,0.15]",
    "train.lr_schedule.kind=triangular",
]

# The fast network: airbench's shape and recipe (docs/networks.md), each setting chosen on
# validation accuracy (screening.md).
FAST_NETWORK: list[str] = [
    "train.model.kind=airbench",
    "train.optimizer=sgd",
    "train.learning_rate=0.2",
    "train.momentum=0.85",
    "train.weight_decay=0.0005",
    "train.label_smoothing=0.2",
    "train.lr_schedule.kind=triangular",
    "train.lr_schedule.warmup_fraction=0.2",
    "train.model.bn_momentum=0.6",
    "train.model.bn_scale=false",
    "train.augment.shift=2",
    "train.augment.fill=reflect",
    "train.model.test_views=flip",
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
        node[leaf] = yaml.safe_load(value)
    return raw

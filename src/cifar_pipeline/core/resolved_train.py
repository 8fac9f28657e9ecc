"""The recipe stage's output, `data/recipes/<dataset>.json`: a dataset's train values with its
recipe resolved, which the train stage depends on instead of on params.yaml and recipes.yaml
(dvc.yaml), and checks it trains with."""

from __future__ import annotations

import json
from pathlib import Path

from cifar_pipeline.core.files import atomic_file, read_json, write_json
from cifar_pipeline.core.param_readers import ParamsError
from cifar_pipeline.core.params import Params, flatten


def write_resolved_train(params: Params, dataset: str, path: Path) -> None:
    """The recipe stage's output: `dataset`'s resolved train values as dotted keys (sorted JSON,
    so equal values give an equal file and DVC reruns nothing)."""
    params.dataset(dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        write_json(tmp, flatten(params.train, "train."))


def check_resolved_train(params: Params, dataset: str, path: Path) -> None:
    """Refuse to train with values other than those the recipe stage resolved (params.yaml or
    recipes.yaml edited in between): dvc.lock would record that file for another model."""
    recorded = read_json(path)
    ours = json.loads(json.dumps(flatten(params.train, "train.")))
    if recorded != ours:
        changed = sorted(k for k in set(recorded) | set(ours) if recorded.get(k) != ours.get(k))
        key = changed[0]
        raise ParamsError(
            f"{dataset}'s train values changed after the recipe stage resolved them ({key} "
            f"{recorded.get(key)!r} -> {ours.get(key)!r}); run `dvc repro` again"
        )

"""What identifies a training run, said once: the params its model follows from.

The checkpoint fingerprint, the run's MLflow params and the registered version's `param.*`
tags are derived from here, and tests/test_dvc_yaml.py holds dvc.yaml's train params to it,
so a param that changes the model reruns the stage, starts a new run instead of resuming an
old one, and is shown on the version.
"""

from __future__ import annotations

from typing import Any

from cifar_pipeline.core.params import Params, flatten

# Of a dataset's `data.<d>` fields, the ones that shape the model. Not the url: the same
# archive (by md5) fetched from another place trains the same model; runs record the url apart.
DATA_FIELDS = ("md5", "label_mode")
SECTIONS = ("split", "train")  # every key of these


def run_identity(params: Params, dataset: str) -> dict[str, Any]:
    """The dotted keys and values that make two training runs of `dataset` the same run."""
    data = flatten(params.data[dataset])
    return {
        "dataset": dataset,
        **{f"data.{field}": data[field] for field in DATA_FIELDS},
        **{
            key: value
            for section in SECTIONS
            for key, value in flatten(getattr(params, section), f"{section}.").items()
        },
    }


# Not identity: the same resolved values train the same model whatever recipe they came from.
RECIPE_KEYS = ("recipe", "recipe.overrides")


def recorded_params(params: Params, dataset: str) -> dict[str, Any]:
    """The run's identity, the recipe it was resolved from (and which keys params.yaml overrode)
    and where its data came from: what a training run logs as MLflow params (masked there) and
    its registered version shows as tags."""
    return {
        **run_identity(params, dataset),
        "recipe": params.recipe,
        "recipe.overrides": ", ".join(params.recipe_overrides) or "none",
        "data.url": params.data[dataset].url,
    }


def is_recorded(key: str) -> bool:
    """Whether an MLflow param key of a training run is one of `recorded_params`' keys."""
    return (
        key in ("dataset", "data.url", *RECIPE_KEYS)
        or key in {f"data.{f}" for f in DATA_FIELDS}
        or key.startswith(tuple(f"{section}." for section in SECTIONS))
    )


def dvc_params() -> list[Any]:
    """dvc.yaml's train-stage params for the same keys (`${item}` is the dataset). The train
    values enter as a file instead (RESOLVED_TRAIN: the recipe stage's output, every `train.*`
    key resolved), so another recipe, or another dataset's, never reruns a training."""
    return [*(f"data.${{item}}.{field}" for field in DATA_FIELDS), "split"]


# The recipe stage's params and output, which the train stage depends on.
RECIPE_STAGE_PARAMS = ["recipe", "train"]
RESOLVED_TRAIN = "data/recipes/${item}.json"

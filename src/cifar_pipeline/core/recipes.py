"""Named recipes (recipes.yaml): which recipe each dataset trains with, and a recipe resolved into
params.yaml's train section.

A recipe is a named, complete set of `train` values; `recipe` in params.yaml names one for every
dataset or one per dataset, and every train key whose value is the word `recipe` takes the
recipe's value, so one word picks a recipe while any key written out still overrides it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cifar_pipeline.core.datasets import SPECS
from cifar_pipeline.core.param_readers import ParamsError, did_you_mean
from cifar_pipeline.core.yaml_reader import read_yaml_file

RECIPES_FILE = "recipes.yaml"  # beside params.yaml
FROM_RECIPE = "recipe"  # a train value that takes the chosen recipe's


def read_recipes(path: Path | str) -> dict[str, Any]:
    """recipes.yaml: recipe names, each mapped to its train values."""
    path = Path(path)
    recipes = read_yaml_file(path, "it holds the named recipes and belongs beside params.yaml (restore it from git)")
    if not isinstance(recipes, dict) or not recipes or not all(isinstance(v, dict) for v in recipes.values()):
        raise ParamsError(f"{path} must map each recipe name to its train values; restore it from git")
    return recipes


def _recipe_name(value: Any, recipes: dict[str, Any], where: str = "recipe") -> str:
    if not isinstance(value, str) or value not in recipes:
        raise ParamsError(
            f"params.yaml: {where} {value!r} is not in {RECIPES_FILE}{did_you_mean(value, recipes)}; "
            f"choose one of {sorted(recipes)}"
        )
    return value


def recipe_names(value: Any, recipes: dict[str, Any], datasets: tuple[str, ...]) -> dict[str, str]:
    """Each listed dataset's recipe: `recipe` is one name for all, or a mapping dataset -> name."""
    if not isinstance(value, dict):
        name = _recipe_name(value, recipes)
        return dict.fromkeys(datasets, name)
    for key in value:
        if key not in SPECS:
            raise ParamsError(
                f"params.yaml: recipe names a recipe for unknown dataset {key!r}{did_you_mean(key, SPECS)}; "
                f"its keys are dataset names from {sorted(SPECS)}"
            )
    if missing := [name for name in datasets if name not in value]:
        raise ParamsError(
            f"params.yaml: recipe names no recipe for {missing[0]}; add `{missing[0]}: <recipe>` under recipe, "
            f"or write one name for every dataset (`recipe: airbench94`)"
        )
    return {name: _recipe_name(value[name], recipes, f"recipe.{name}") for name in datasets}


def resolve_recipe(train: Any, recipe: Any, name: str) -> tuple[Any, tuple[str, ...]]:
    """params.yaml's train section with each `recipe` value replaced by the recipe's, and the
    keys params.yaml sets itself where the recipe has a value (its overrides)."""
    overrides: list[str] = []

    def merge(ours: Any, theirs: Any, where: str) -> Any:
        if not isinstance(ours, dict):
            return ours
        inside = name + where.removeprefix("train")  # the same place in recipes.yaml
        if not isinstance(theirs, dict):
            raise ParamsError(f"{RECIPES_FILE}: {inside} must be a mapping of keys like params.yaml's {where}")
        for key in theirs:
            if key not in ours:
                raise ParamsError(
                    f"{RECIPES_FILE}: {inside}.{key} is not a key of params.yaml's {where}"
                    f"{did_you_mean(key, ours, f'{inside}.')}; fix the recipe, or add `{key}: {FROM_RECIPE}` "
                    f"to params.yaml's {where}"
                )
        merged = {}
        for key, value in ours.items():
            dotted = f"{where}.{key}"
            if value == FROM_RECIPE:
                if key not in theirs:
                    raise ParamsError(
                        f"params.yaml: {dotted} is '{FROM_RECIPE}', but {RECIPES_FILE}'s {name!r} has no value for it; "
                        f"write a value for {dotted} in params.yaml, or add {key} to the recipe"
                    )
                merged[key] = theirs[key]
            elif isinstance(value, dict):
                merged[key] = merge(value, theirs.get(key, {}), dotted)
            else:
                if key in theirs:
                    overrides.append(dotted)
                merged[key] = value
        return merged

    return merge(train, recipe, "train"), tuple(sorted(overrides))

"""Named recipes (recipes.yaml): one word picks every train value, any key written out overrides it."""

import copy
from pathlib import Path

import pytest
import yaml

from cifar_pipeline.core.params import ParamsError, flatten, load_params, parse_params
from cifar_pipeline.core.recipes import FROM_RECIPE, read_recipes
from cifar_pipeline.core.run_identity import recorded_params, run_identity

ROOT = Path(__file__).resolve().parents[1]
RECIPES = read_recipes(ROOT / "recipes.yaml")


@pytest.fixture
def raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def with_recipe(raw, name, **train):
    changed = copy.deepcopy(raw)
    changed["recipe"] = name
    changed["train"].update(train)
    return changed


def leaves(section, prefix="train."):
    """A recipe's values as dotted keys, lists as tuples (as the params dataclasses hold them)."""
    return {key: tuple(v) if isinstance(v, list) else v for key, v in flatten(section, prefix).items()}


def test_the_project_leaves_every_recipe_value_to_its_recipe(raw):
    """params.yaml writes no value a recipe sets, so `recipe` alone decides them all."""
    written = leaves(raw["train"])
    for name, recipe in RECIPES.items():
        assert set(leaves(recipe)) <= set(written), name
        assert all(written[key] == FROM_RECIPE for key in leaves(recipe)), name


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_recipe_resolves_to_exactly_its_values(raw, name):
    params = parse_params(with_recipe(raw, name), RECIPES)
    resolved = leaves(params.train)
    assert params.recipe == name and params.recipe_overrides == ()
    assert {key: resolved[key] for key in leaves(RECIPES[name])} == leaves(RECIPES[name])


def test_seed_recipe_is_the_seed_network_with_its_bugs_fixed(raw):
    train = parse_params(with_recipe(raw, "seed"), RECIPES).train
    assert (train.model.kind, train.epochs, train.optimizer, train.learning_rate) == ("seed", 200, "adam", 0.005)
    assert (train.lr_schedule.kind, train.model.test_views) == ("cosine", "none")


def test_fast_recipe_is_the_fast_network(raw):
    train = parse_params(with_recipe(raw, "fast"), RECIPES).train
    assert (train.model.kind, train.epochs, train.optimizer, train.model.test_views) == ("airbench", 10, "sgd", "flip")


def test_a_key_written_out_overrides_the_recipe_and_is_recorded(raw):
    changed = with_recipe(raw, "fast", epochs=12)
    changed["train"]["model"]["test_views"] = "none"
    params = parse_params(changed, RECIPES)
    assert (params.train.epochs, params.train.model.test_views, params.train.optimizer) == (12, "none", "sgd")
    assert params.recipe_overrides == ("train.epochs", "train.model.test_views")
    logged = recorded_params(params, "cifar10")
    assert logged["recipe"] == "fast" and logged["recipe.overrides"] == "train.epochs, train.model.test_views"
    assert logged["train.epochs"] == 12 and logged["train.learning_rate"] == RECIPES["fast"]["learning_rate"]
    # The run is its resolved values: the recipe's name is logged beside them, not part of them.
    assert "recipe" not in run_identity(params, "cifar10")


def test_an_unknown_recipe_is_one_line_with_the_choices(raw):
    with pytest.raises(ParamsError, match=r"recipe 'fsat' is not in recipes.yaml \(did you mean 'fast'\?\); choose"):
        parse_params(with_recipe(raw, "fsat"), RECIPES)


def test_params_may_name_a_recipe_per_dataset(raw):
    """`recipe: {cifar10: ..., cifar100: ...}`: each dataset's stages see their own recipe resolved."""
    per_dataset = with_recipe(raw, {"cifar10": "airbench94", "cifar100": "fast"})
    for dataset, name in (("cifar10", "airbench94"), ("cifar100", "fast")):
        params = parse_params(per_dataset, RECIPES, dataset)
        assert params.recipe == name
        assert leaves(RECIPES[name]).items() <= leaves(params.train).items()
        assert recorded_params(params, dataset)["recipe"] == name


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"cifar10": "fast"}, r"recipe names no recipe for cifar100; add `cifar100: <recipe>` under recipe"),
        ({"cifar10": "fast", "cifar100": "fats"}, r"recipe.cifar100 'fats' is not in recipes.yaml \(did you mean"),
        ({"cifar10": "fast", "cifar100": "fast", "cifar1000": "fast"}, r"unknown dataset 'cifar1000'"),
    ],
)
def test_a_bad_recipe_per_dataset_is_one_line(raw, recipe, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(with_recipe(raw, recipe), RECIPES)


def test_a_value_the_recipe_lacks_names_the_key_and_both_fixes(raw):
    recipes = copy.deepcopy(RECIPES)
    del recipes["fast"]["lr_schedule"]["warmup_fraction"]
    message = r"train.lr_schedule.warmup_fraction is 'recipe', but recipes.yaml's 'fast' has no value for it; write"
    with pytest.raises(ParamsError, match=message):
        parse_params(with_recipe(raw, "fast"), recipes)


def test_a_misspelt_key_in_a_recipe_is_refused(raw):
    recipes = copy.deepcopy(RECIPES)
    recipes["fast"]["lerning_rate"] = 0.1
    message = r"recipes.yaml: fast.lerning_rate is not a key of params.yaml.s train \(did you mean .fast.learning_rate."
    with pytest.raises(ParamsError, match=message):
        parse_params(with_recipe(raw, "fast"), recipes)


def test_a_key_missing_from_params_names_the_line_to_add(raw):
    del raw["train"]["label_smoothing"]
    with pytest.raises(ParamsError, match=r"fast.label_smoothing is not a key .*add `label_smoothing: recipe` to"):
        parse_params(with_recipe(raw, "fast"), RECIPES)


@pytest.mark.parametrize("name", [["fast"], None, 3])
def test_a_recipe_that_is_not_a_name_is_one_line(raw, name):
    with pytest.raises(ParamsError, match=r"params.yaml: recipe .* is not in recipes.yaml"):
        parse_params(with_recipe(raw, name), RECIPES)


def test_a_whole_section_may_come_from_the_recipe(raw):
    raw["train"]["augment"] = "recipe"
    assert parse_params(with_recipe(raw, "seed"), RECIPES).train.augment.shift == RECIPES["seed"]["augment"]["shift"]


def test_a_bad_value_in_a_recipe_is_named_like_one_in_params(raw):
    recipes = copy.deepcopy(RECIPES)
    recipes["fast"]["learning_rate"] = -1
    with pytest.raises(ParamsError, match=r"train.learning_rate must be > 0, got -1"):
        parse_params(with_recipe(raw, "fast"), recipes)


def test_load_params_reads_the_recipes_beside_params(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    with pytest.raises(ParamsError, match=r"recipes.yaml not found: it holds the named recipes"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "recipes.yaml").write_text("fast: [1, 2]\n")
    with pytest.raises(ParamsError, match=r"recipes.yaml must map each recipe name to its train values"):
        load_params(tmp_path / "params.yaml")


def test_the_readme_names_every_recipe_and_the_default_one(raw):
    readme = (ROOT / "README.md").read_text()
    recipe = raw["recipe"]
    shown = "{" + ", ".join(f"{k}: {v}" for k, v in recipe.items()) + "}" if isinstance(recipe, dict) else recipe
    assert f"| `recipe` | `{shown}` |" in (ROOT / "docs/params.md").read_text()  # the params table
    assert all(f"dvc exp run -S recipe={name}" in readme or f"`{name}`" in readme for name in RECIPES)

"""What `cifar-sweep NAME --best` prints: the study's counts, the best trial as `-S` lines (or
`dvc exp apply`), the same values as a complete recipe for recipes.yaml, and which keys
mattered (Optuna's importance)."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from cifar_pipeline.core.params import flatten, parse_params
from cifar_pipeline.sweep.spec import Sweep, SweepError, apply, decode, override


def best_report(sweep: Sweep, study, raw_params: dict[str, Any], recipes: dict[str, Any]) -> str:
    import optuna

    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state == state for t in trials) for state in optuna.trial.TrialState}
    summary = ", ".join(f"{n} {state.name.lower()}" for state, n in counts.items() if n)
    head = f"sweep {sweep.name}: {sweep.dataset}, {sweep.direction} {sweep.metric}; {len(trials)} trials ({summary})"
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise SweepError(f"{head}; none complete yet: run `cifar-sweep {sweep.name}` (or wait for its workers)")
    best = study.best_trial
    values = {key: decode(value) for key, value in best.params.items()}
    lines = [
        head,
        f"best: trial {best.number}, {sweep.metric} {best.value:.4f}; its DVC experiment: "
        f"`dvc exp apply {best.user_attrs.get('experiment', '?')}`",
        "as -S lines (`dvc exp run` them, or write them in params.yaml):",
        *(f"  -S '{override(key, value)}'" for key, value in values.items()),
        "as a recipe (add it to recipes.yaml, then `dvc exp run -S recipe=NAME`):",
        recipe_block(sweep, values, raw_params, recipes),
    ]
    lines.append(importance_line(study, len(complete)))
    return "\n".join(lines)


def recipe_block(sweep: Sweep, values: dict[str, Any], raw_params: dict[str, Any], recipes: dict[str, Any]) -> str:
    """The recipe the trial trained: its base recipe's keys, each with the value the trial
    resolved to (the sweep's values and whatever params.yaml itself overrides)."""
    params = parse_params(apply(raw_params, values), recipes)
    resolved = flatten(params.train, "train.")
    recipe = copy.deepcopy(recipes[params.recipe])

    def fill(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                fill(value, f"{prefix}{key}.")
            else:
                node[key] = resolved[f"{prefix}{key}"]

    fill(recipe, "train.")
    left_out = [
        override(k, v) for k, v in values.items() if k != "recipe" and k.removeprefix("train.") not in _leaves(recipe)
    ]
    text = yaml.safe_dump({sweep.name: recipe}, sort_keys=False, default_flow_style=None, width=100)
    block = f"# {params.recipe} as sweep {sweep.name}'s best trial trained it ({sweep.dataset})\n{text.rstrip()}"
    if left_out:
        block += f"\n# not recipe keys (keep them as -S): {' '.join(left_out)}"
    return block


def _leaves(node: dict[str, Any], prefix: str = "") -> set[str]:
    found = set()
    for key, value in node.items():
        found |= _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
    return found


def importance_line(study, complete: int) -> str:
    """Optuna's parameter importance (fANOVA) over the complete trials; a note when too few."""
    import optuna

    if complete < 3:
        return f"importance: needs at least 3 complete trials ({complete} so far)"
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as err:
        return f"importance: not computed ({err})"
    return "importance (Optuna's fANOVA, share of the metric's variance): " + ", ".join(
        f"{key} {share:.2f}" for key, share in importances.items()
    )

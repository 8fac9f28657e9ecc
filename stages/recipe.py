"""DVC stage: one dataset's training values, its recipe resolved (data/recipes/<dataset>.json).

The train stage depends on this file instead of on params.yaml's `train` and `recipe` and on
recipes.yaml, so it reruns exactly when a value it trains with changes: not when another
recipe, or the recipe another dataset trains with, is edited. This stage reruns on any such
edit (it takes a second) and refuses a bad recipe before DVC touches the train stage's outputs.
"""

from pathlib import Path

from cifar_pipeline.core.resolved_train import write_resolved_train
from cifar_pipeline.core.stage_runner import run_stage


def arguments(parser) -> None:
    parser.add_argument("dataset")
    parser.add_argument("resolved_json", type=Path)


if __name__ == "__main__":
    run_stage(
        __doc__,
        arguments,
        lambda args, params: write_resolved_train(params, args.dataset, args.resolved_json),
    )

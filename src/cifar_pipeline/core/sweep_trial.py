"""What a sweep worker (`cifar-sweep`, sweep/) tells the train stage it starts, and what they
name alike: the trial's description in the environment, the Optuna user attributes the stage
writes, and the MLflow tags of a trial's run.

The worker runs a trial as `dvc exp run`, so the only way in is the environment: it sets
`CIFAR_SWEEP_TRIAL` (JSON: storage URL, sweep (the study's name), trial id and number, metric, dataset, parent run).
Without it (every ordinary `dvc repro`) nothing reads any of this. The variable may hold a
database password; nothing prints or logs it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import cache

from cifar_pipeline.core.errors import PipelineError

ENV = "CIFAR_SWEEP_TRIAL"
# The trial's user attributes the stage writes and the worker reads.
RUN_ATTR = "mlflow_run_id"
PRUNED_ATTR = "pruned_after_epoch"
# MLflow tags of a trial's run.
SWEEP_TAG, TRIAL_TAG, STATE_TAG = "sweep", "trial", "state"


@dataclass(frozen=True)
class SweepTrial:
    storage: str
    sweep: str  # also its Optuna study's name
    trial_id: int
    number: int
    metric: str
    dataset: str
    parent_run_id: str
    prune_after_epochs: int | None  # None: never prune
    prune_startup_trials: int

    def to_env(self) -> str:
        return json.dumps(asdict(self))


def make_pruner(after_epochs: int | None, startup_trials: int):
    """The sweep's pruner, built alike by the worker and the train stage that asks it: Optuna's
    median rule (stop a trial whose best value so far is behind the median of the complete
    trials at that epoch), from epoch `after_epochs` on, once `startup_trials` trials completed."""
    import optuna

    if after_epochs is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=after_epochs)


@cache
def current() -> SweepTrial | None:
    """The trial this process trains for, or None outside a sweep."""
    raw = os.environ.get(ENV)
    if not raw:
        return None
    try:
        return SweepTrial(**json.loads(raw))
    except (ValueError, TypeError) as err:
        raise PipelineError(
            f"{ENV} is not a sweep trial's description ({err}); unset it (`cifar-sweep` sets it)"
        ) from None


def for_dataset(dataset: str) -> SweepTrial | None:
    trial = current()
    return trial if trial is not None and trial.dataset == dataset else None


def run_tags(dataset: str) -> dict[str, str]:
    """The MLflow tags that make a trial's training run a child of its sweep's parent run."""
    trial = for_dataset(dataset)
    if trial is None:
        return {}
    return {
        "mlflow.parentRunId": trial.parent_run_id,
        SWEEP_TAG: trial.sweep,
        TRIAL_TAG: str(trial.number),
        STATE_TAG: "running",
    }

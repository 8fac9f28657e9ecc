"""The train stage's side of a sweep trial: report each epoch's validation metric to the trial's
Optuna study and stop a trial its pruner gives up on (core/sweep_trial.py says what the worker
passes in)."""

from __future__ import annotations

import math

import keras

from cifar_pipeline.core.sweep_trial import PRUNED_ATTR, RUN_ATTR, SweepTrial, make_pruner
from cifar_pipeline.tracking.mlflow_runs import RunStopped


class TrialPruned(RunStopped):
    """The sweep's pruner stopped this trial: its MLflow run ends KILLED, tagged pruned."""


class TrialGone(RunStopped):
    """The study no longer counts this trial as running (its worker was lost and another marked it failed)."""


def _trial(sweep: SweepTrial):
    import optuna  # only a sweep's training needs it

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = make_pruner(sweep.prune_after_epochs, sweep.prune_startup_trials)
    study = optuna.load_study(study_name=sweep.sweep, storage=sweep.storage, pruner=pruner)
    return optuna.Trial(study, sweep.trial_id), study


class ReportToStudy(keras.callbacks.Callback):
    """Per epoch: report the sweep's metric, then stop if the pruner says so.

    Comes after the epoch's checkpoint and MLflow logging (`EpochLogger`), so a pruned run
    still shows every epoch it trained.
    """

    def __init__(self, sweep: SweepTrial, run_id: str) -> None:
        super().__init__()
        self.sweep = sweep
        self.trial, self.study = _trial(sweep)
        self.trial.set_user_attr(RUN_ATTR, run_id)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        import optuna

        value = float((logs or {}).get(self.sweep.metric, math.nan))
        state = next(t.state for t in self.study.get_trials(deepcopy=False) if t.number == self.sweep.number)
        if state != optuna.trial.TrialState.RUNNING:
            raise TrialGone(
                f"trial {self.sweep.number} of sweep {self.sweep.sweep} is {state.name.lower()} in the study "
                f"(its worker was lost); this training stops"
            )
        self.trial.report(value, epoch + 1)
        if self.trial.should_prune():
            self.trial.set_user_attr(PRUNED_ATTR, epoch + 1)
            raise TrialPruned(
                f"trial {self.sweep.number} of sweep {self.sweep.sweep} pruned after epoch {epoch + 1}: "
                f"{self.sweep.metric} {value:.4f} is behind the earlier trials at that epoch; nothing was kept"
            )

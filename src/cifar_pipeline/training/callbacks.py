"""The train stage's Keras callbacks: per-epoch checkpoint and MLflow logging, Ctrl-C, and the
one-line error for a diverged loss."""

from __future__ import annotations

import re
import time

import keras
import mlflow

from cifar_pipeline.core.errors import PipelineError
from cifar_pipeline.core.interrupts import interrupted
from cifar_pipeline.core.metric_names import EPOCH_TIME, LEARNING_RATE, THROUGHPUT
from cifar_pipeline.training.checkpoint import Checkpoints, TrainingState
from cifar_pipeline.training.recipe import last_step_rate


class TrainingDiverged(PipelineError):
    """The loss became NaN or infinite: more epochs cannot help."""


# Keras's TerminateOnNaN(raise_error=True) says "NaN or Inf loss encountered at batch 3. Loss value: nan. ..."
_NON_FINITE = re.compile(r"NaN or Inf loss encountered at batch (\d+)\. Loss value: (\S+?)\.? ")


def diverged(err: RuntimeError) -> TrainingDiverged | None:
    """TerminateOnNaN's error as one line with what to do, or None for any other RuntimeError."""
    found = _NON_FINITE.search(str(err))
    if not found:
        return None
    return TrainingDiverged(
        f"training diverged: loss is {found.group(2)} at batch {int(found.group(1)) + 1}; "
        f"lower train.learning_rate or check the input data"
    )


class StopWhenInterrupted(keras.callbacks.Callback):
    """Raise KeyboardInterrupt after any batch once Ctrl-C or SIGTERM arrived, in case the
    handler's own KeyboardInterrupt was swallowed where it landed."""

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if interrupted():
            raise KeyboardInterrupt

    on_test_batch_end = on_train_batch_end


class EpochLogger(keras.callbacks.Callback):
    """Per finished epoch: commit a checkpoint, then one `log_metrics` call to MLflow.

    Logs the Keras metrics plus rate, wall time and throughput; steps are 1-based epoch
    numbers, as Keras prints them ("Epoch 1/200"). Committing before logging means a
    kill can only leave an epoch unlogged, which the resumed run logs from the
    checkpoint: no step is ever logged twice.
    """

    def __init__(self, images_per_epoch: int, checkpoints: Checkpoints | None, state: TrainingState) -> None:
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.checkpoints = checkpoints
        self.state = state
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        seconds = time.perf_counter() - self._started
        metrics = {key: float(value) for key, value in (logs or {}).items()}
        metrics[LEARNING_RATE] = last_step_rate(self.model.optimizer)
        metrics[EPOCH_TIME] = seconds
        metrics[THROUGHPUT] = self.images_per_epoch / seconds
        self.state.rows.append({"epoch": epoch + 1, **metrics})
        self.state.epochs_done = epoch + 1
        if self.checkpoints is not None:  # None: a run that cannot resume (multi-worker)
            self.checkpoints.commit(self.model, self.state)
        mlflow.log_metrics(metrics, step=epoch + 1)


# Batches whose statistics replace BatchNormalization's after weight averaging: 12,800 images

"""tf.distribute for the train stage: the strategy `train.distribute` asks for, and how many replicas.

`batch_size` stays the *global* batch: a strategy splits each batch over its replicas, so
the same params give the same number of steps and the same learning-rate schedule on one
device or several (the rate is not scaled; set `train.learning_rate` for a bigger batch).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import tensorflow as tf

from cifar_pipeline.errors import PipelineError

# Splits the CPU into N logical devices, so `mirrored` can be tried (and is tested) without GPUs.
LOGICAL_CPUS_ENV = "CIFAR_LOGICAL_CPUS"


class DistributionError(PipelineError):
    """The requested distribution cannot be set up on this machine."""


@dataclass(frozen=True)
class Distribution:
    mode: str  # what ran: none or mirrored
    strategy: tf.distribute.Strategy | None
    devices: tuple[str, ...]

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync if self.strategy else 1

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Where the model, its optimizer and metrics must be made (and a checkpoint loaded)."""
        with self.strategy.scope() if self.strategy else contextlib.nullcontext():
            yield


def split_cpu() -> None:
    """Apply CIFAR_LOGICAL_CPUS before TensorFlow starts its runtime (it cannot change after)."""
    value = os.environ.get(LOGICAL_CPUS_ENV)
    if not value:
        return
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise DistributionError(f"{LOGICAL_CPUS_ENV} must be a whole number >= 1, got {value!r}; unset it or fix it")
    cpu = tf.config.list_physical_devices("CPU")[0]
    # RuntimeError: the runtime already started (an in-process caller, a second train()): it keeps its devices.
    with contextlib.suppress(RuntimeError):
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def resolve(setting: str) -> Distribution:
    """The strategy for `train.distribute`: auto = mirrored over 2+ GPUs, else none."""
    split_cpu()
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if setting == "multi_worker":
        raise DistributionError(
            "train.distribute: multi_worker does not train yet: Keras 3.15's model.fit fails under "
            "MultiWorkerMirroredStrategy (keras-team/keras#20585); use mirrored (several GPUs of one machine) or none"
        )
    if setting == "none" or (setting == "auto" and len(gpus) < 2):
        return Distribution("none", None, ())
    devices = tuple(gpus) or tuple(device.name for device in tf.config.list_logical_devices("CPU"))
    if len(devices) < 2:
        print(
            f"warning: train.distribute is mirrored, but this machine has one device ({devices[0]}); "
            f"training on it alone (set {LOGICAL_CPUS_ENV}=2 to split a CPU into two for a try)"
        )
    return Distribution("mirrored", tf.distribute.MirroredStrategy(list(devices)), devices)

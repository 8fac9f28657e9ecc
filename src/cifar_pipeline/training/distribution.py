"""tf.distribute for the train stage: the strategy `train.distribute` asks for, and how many replicas.

`batch_size` stays the *global* batch: a strategy splits each batch over its replicas, so
the same params give the same number of steps and the same learning-rate schedule on one
device or several (the rate is not scaled; set `train.learning_rate` for a bigger batch).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import keras
import tensorflow as tf

from cifar_pipeline.core.errors import PipelineError
from cifar_pipeline.training import keras_workaround

# Splits the CPU into N logical devices, so `mirrored` can be tried (and is tested) without GPUs.
LOGICAL_CPUS_ENV = "CIFAR_LOGICAL_CPUS"
MAX_LOGICAL_CPUS = 64  # a try of mirrored, not a cluster: each device is a copy of the model


class DistributionError(PipelineError):
    """The requested distribution cannot be set up on this machine."""


@dataclass(frozen=True)
class Distribution:
    mode: str  # what runs: none, mirrored or multi_worker
    strategy: tf.distribute.Strategy | None
    chief: bool = True  # only the chief logs to MLflow and writes outputs
    task: str = ""  # "worker 1", for messages
    cluster: str = ""  # TF_CONFIG's cluster as canonical JSON: every worker must hold the same one

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync if self.strategy else 1

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Where the model, its optimizer and metrics must be made (and a checkpoint loaded)."""
        with self.strategy.scope() if self.strategy else contextlib.nullcontext():
            yield

    def patch_for_fit(self, model) -> None:
        """What a model needs before `fit` under this strategy (Keras 3.15's fix: its first-batch
        build fails on replicas of unequal batches, e.g. 128 images over 3 devices, and on workers)."""
        if self.mode in ("mirrored", "multi_worker"):
            keras_workaround.patch(model)

    def callbacks(self) -> list[keras.callbacks.Callback]:
        """What every worker runs after each epoch, before the chief logs or checkpoints it."""
        return [SyncMovingStatistics(self.strategy)] if self.mode == "multi_worker" else []


class SyncMovingStatistics(keras.callbacks.Callback):
    """Average the float non-trainable weights (BatchNormalization's moving mean and variance)
    over the workers after every epoch.

    Each worker updates them from its own part of the data only: after a 4-epoch run on 2
    workers the trainable weights were equal and every moving statistic differed. Averaged,
    the chief's saved model holds the cluster's statistics and the workers end identical.
    """

    def __init__(self, strategy: tf.distribute.Strategy) -> None:
        super().__init__()
        self.strategy = strategy

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        for variable in self.model.non_trainable_variables:
            if "float" in str(variable.dtype):
                mean = self.strategy.reduce("MEAN", tf.convert_to_tensor(variable.value), axis=None)
                variable.assign(mean)


def split_cpu() -> None:
    """Apply CIFAR_LOGICAL_CPUS before TensorFlow starts its runtime (it cannot change after)."""
    value = os.environ.get(LOGICAL_CPUS_ENV)
    if not value:
        return
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_LOGICAL_CPUS:
        raise DistributionError(
            f"{LOGICAL_CPUS_ENV} must be a whole number from 1 to {MAX_LOGICAL_CPUS}, got {value!r}; unset it or fix it"
        )
    cpu = tf.config.list_physical_devices("CPU")[0]
    # RuntimeError: the runtime already started (an in-process caller, a second train()): it keeps its devices.
    with contextlib.suppress(RuntimeError):
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def resolve(setting: str) -> Distribution:
    """The strategy for `train.distribute`: auto = mirrored over 2+ GPUs, else none."""
    if setting == "multi_worker":
        return multi_worker()  # before anything starts TF's runtime: collectives are configured at startup
    split_cpu()
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if setting == "none" or (setting == "auto" and len(gpus) < 2):
        return Distribution("none", None)
    devices = tuple(gpus) or tuple(device.name for device in tf.config.list_logical_devices("CPU"))
    if len(devices) < 2:
        print(
            f"warning: train.distribute is mirrored, but this machine has one device ({devices[0]}); "
            f"training on it alone (set {LOGICAL_CPUS_ENV}=2 to split a CPU into two for a try)"
        )
    return Distribution("mirrored", tf.distribute.MirroredStrategy(list(devices)))


# How long a collective (one all-reduce) may wait for a peer before the worker gives up; TF's
# coordination service separately reports a worker that stopped sending heartbeats (~20 s).
COLLECTIVE_TIMEOUT_S = 300.0


def cluster() -> tuple[dict, str, int]:
    """TF_CONFIG's cluster, this task's type and index; one clear error for a missing or bad one."""
    raw = os.environ.get("TF_CONFIG")
    example = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
    if not raw:
        raise DistributionError(
            f"train.distribute is multi_worker, but TF_CONFIG is not set: set it on every worker to the "
            f"cluster and that worker's place in it, e.g. TF_CONFIG='{example}' (docs/distributed.md)"
        )
    try:
        config = json.loads(raw)
        workers = config["cluster"].get("worker", [])
        kind, index = config["task"]["type"], int(config["task"]["index"])
        members = config["cluster"][kind]
        members[index]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise DistributionError(
            f"TF_CONFIG is not a cluster description TensorFlow can use: {raw[:200]!r}; write it as {example}"
        ) from None
    if kind not in ("chief", "worker") or not (workers or "chief" in config["cluster"]):
        raise DistributionError(f"TF_CONFIG task type must be chief or worker, got {kind!r}")
    return config["cluster"], kind, index


def check_port(address: str, task: str) -> None:
    """Refuse an address whose port another process holds: TensorFlow would fail to start its
    server with a C++ error, or, on some versions, wait."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or not host:
        raise DistributionError(f"TF_CONFIG gives {task} the address {address!r}; write it as host:port")
    with socket.socket() as probe:
        try:
            probe.bind(("", int(port)))
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise DistributionError(f"{task} cannot listen on port {port} of TF_CONFIG ({err.strerror})") from None
            raise DistributionError(
                f"port {port} of {task}'s TF_CONFIG address {address} is in use by another process: stop it, "
                f"or give this worker a free port in the cluster list of every worker's TF_CONFIG"
            ) from None


# How long a worker waits for every worker of TF_CONFIG's cluster to start; a user starts
# them by hand on several machines, so minutes, but not forever.
CLUSTER_WAIT_ENV = "CIFAR_CLUSTER_WAIT_S"
CLUSTER_WAIT_S = 600.0

# Runs beside the worker: TensorFlow holds the GIL (and catches SIGTERM) while it connects to its
# peers, so no thread or signal handler of the worker can end that wait. EOF on stdin: it is over.
_WATCHDOG = """
import os, select, signal, sys
parent, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if not select.select([sys.stdin], [], [], seconds)[0]:
    sys.stderr.write(message + "\\n")
    sys.stderr.flush()
    os.kill(parent, signal.SIGKILL)
"""


def cluster_wait_s() -> float:
    value = os.environ.get(CLUSTER_WAIT_ENV)
    if not value:
        return CLUSTER_WAIT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise DistributionError(
            f"{CLUSTER_WAIT_ENV} must be a number of seconds > 0, got {value!r}; unset it or fix it"
        )
    return seconds


@contextlib.contextmanager
def bounded_wait(seconds: float, message: str) -> Iterator[None]:
    """End this process with `message` (one line) if the block has not finished in `seconds`."""
    watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(seconds), message], stdin=subprocess.PIPE
    )
    try:
        yield
    finally:
        watchdog.stdin.close()
        watchdog.wait()


def multi_worker() -> Distribution:
    spec, kind, index = cluster()
    task = f"{kind} {index}"
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in spec)
    check_port(spec[kind][index], task)
    if not keras_workaround.applies():
        print(
            f"warning: the multi-worker fix was checked on Keras {keras_workaround.KERAS_CHECKED}; "
            f"Keras {keras.__version__} runs unpatched (keras-team/keras#20585 may be fixed there)"
        )
    seconds = cluster_wait_s()
    members = ", ".join(address for role in ("chief", "worker") for address in spec.get(role, []))
    late = (
        f"error: {task} of the multi_worker cluster waited {seconds:g} s for its peers ({members}) and not all "
        f"came: start every worker of TF_CONFIG, with the same cluster list on each (the chief with `dvc repro`, "
        f"the others with `python -m cifar_pipeline.training.worker`), check they can reach each other's ports, "
        f"or set {CLUSTER_WAIT_ENV} to wait longer"
    )
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=COLLECTIVE_TIMEOUT_S)
    with bounded_wait(seconds, late):
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    canonical = json.dumps(spec, sort_keys=True)
    return Distribution("multi_worker", strategy, chief=chief, task=task, cluster=canonical)


def agree(distribution: Distribution, fingerprint: str) -> None:
    """Refuse to train unless every worker has the same params and data (its `fingerprint`).

    Each worker reads its own params.yaml and data/; a worker with other epochs or another
    split would train out of step and fail later with an obscure collective error.
    """
    if distribution.mode != "multi_worker":
        return
    # The cluster list too: workers that disagree on it can still meet, and then wait on a peer
    # that is not there at their first all-reduce.
    combined = hashlib.sha256(f"{fingerprint} {distribution.cluster}".encode()).hexdigest()
    mine = float(int(combined[:12], 16))  # 48 bits: exact in float64, and in a sum of a few
    total = float(distribution.strategy.reduce("SUM", tf.constant(mine, tf.float64), axis=None))
    if total != mine * distribution.replicas:
        raise DistributionError(
            f"the workers of this multi_worker cluster do not have the same params, data and TF_CONFIG cluster list "
            f"({distribution.task}: {combined[:12]}); make params.yaml and data/ equal on every worker (same git "
            f"commit, `dvc pull`), and give every worker the same cluster list"
        )


# A peer that died or cannot be reached: what collectives raise on the workers left.
LOST_PEER = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError)


@contextlib.contextmanager
def peers_reported(distribution: Distribution) -> Iterator[None]:
    """Turn a lost peer of a multi-worker cluster into one line; every worker must restart."""
    try:
        yield
    except LOST_PEER as err:
        if distribution.mode != "multi_worker":
            raise
        detail = " ".join(str(err).split())[:300]
        raise DistributionError(
            f"{distribution.task} of the multi_worker cluster lost a peer ({type(err).__name__}: {detail}); "
            "restart every worker: the chief with `dvc repro`, the others with "
            "`python -m cifar_pipeline.training.worker`"
        ) from None

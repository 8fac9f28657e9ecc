"""One setup of `benchmarks.step_profile`, in its own process: time and profile the default step,
measure this machine's roofs, and account each group of kernels' work against them.

Usage: python -m benchmarks.step_profile_model CONFIG_JSON -> prints one `RESULT {json}` line.
CONFIG keys: batch, steps, classes (10), widths (smoke runs), jit_compile, keras_batchnorm, keras_gelu, keras_conv
(train with Keras's own layer instead of the fast kernel), code (the checkout whose src is first on the path).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import statistics
import sys
import tempfile
import time

# isort: off
import cifar_pipeline  # noqa: F401  first: TF's env defaults, as in the train stage
import keras
import numpy as np
import tensorflow as tf

# isort: on
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from benchmarks.recipes import train_settings
from benchmarks.step_profile import classify
from benchmarks.train_speed import best_seconds, peak_gflops
from cifar_pipeline.data.channel_stats import ChannelStats
from cifar_pipeline.training.hardware import precision_policy
from cifar_pipeline.training.trainer import fit_classifier, new_classifier

BF16 = 2  # bytes per activation element under mixed precision
# Executor bookkeeping around the kernels (each kernel is its own event inside these).
NOT_KERNELS = {"Process", "Start", "Done", "BlockUntilReady", "RunAsync", "FunctionRun"}


def kernel_times(logdir: str) -> tuple[dict[str, float], dict[str, float], float, float]:
    """Seconds per group on TensorFlow's compute threads; seconds of input-pipeline kernels (on
    tf.data's own threads, beside the step); the steps' seconds inside the step function; wall."""
    [path] = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
    space = xplane_pb2.XSpace()
    with open(path, "rb") as file:
        space.ParseFromString(file.read())
    groups: dict[str, float] = collections.defaultdict(float)
    input_kernels: dict[str, float] = collections.defaultdict(float)
    in_step = 0.0
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for event in line.events:
                full = plane.event_metadata[event.metadata_id].name
                seconds = event.duration_ps / 1e12
                if line.name == "python" and full == "multi_step_on_iterator":
                    in_step += seconds
                name, _, kind = full.rpartition(":")
                if not name or kind in NOT_KERNELS or name.startswith(("Iterator", "MakeIterator", "ExecutorState")):
                    continue
                if line.name.startswith("tf_Compute"):
                    groups[classify(kind, name)] += seconds
                elif line.name.startswith("tf_data"):
                    input_kernels[kind] += seconds
    return dict(groups), dict(input_kernels), in_step


def memory_bandwidth(repeats: int = 5) -> float:
    """GB/s of a streaming elementwise op on TensorFlow's own threads, on arrays of the activations'
    size (two 32 MB reads, one write: what of them the caches hold counts, as it does in the step)."""
    a = tf.random.uniform((8 * 2**20,))
    b = tf.random.uniform((8 * 2**20,))
    return 3 * a.numpy().nbytes / best_seconds(tf.function(lambda: a + b), repeats) / 1e9


def layer_work(model: keras.Model, batch: int) -> dict[str, dict[str, float]]:
    """Per group, the work one training step must do at the least: FLOPs of the convolutions
    (forward, backward to the input where one is needed, backward to the weights) and bytes the
    memory-bound layers must read and write (bfloat16 activations, float32 weights)."""
    work: dict[str, dict[str, float]] = collections.defaultdict(lambda: {"flops": 0.0, "bytes": 0.0})
    first_conv = True
    for layer in model.layers:
        size = float(np.prod(layer.output.shape[1:])) * batch  # elements of its output
        kind = type(layer).__name__
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            flops = 2.0 * size * kh * kw * layer.input.shape[-1]
            work["conv forward"]["flops"] += flops
            work["conv backward (weights)"]["flops"] += flops
            if not first_conv:  # nothing needs the gradient of the image
                work["conv backward (input)"]["flops"] += flops
            first_conv = False
        elif "BatchNormalization" in kind:
            work["BatchNorm"]["bytes"] += 8 * size * BF16  # forward: 2 reads, 1 write; backward: 4 reads, 1 write
        elif kind in ("FastGELU", "Activation") and "gelu" in layer.name:
            work["GELU"]["bytes"] += 5 * size * BF16  # forward: read, write; backward: 2 reads, 1 write
        elif kind == "MaxPooling2D":
            work["pooling"]["bytes"] += 10 * size * BF16  # forward: 4 in, 1 out; backward: 1 in, 4 out
        elif kind == "GlobalMaxPooling2D":
            work["pooling"]["bytes"] += 3 * float(np.prod(layer.input.shape[1:])) * batch * BF16
    # SGD with momentum and the per-variable multiples: read weight, gradient, momentum; write two.
    work["optimizer update"]["bytes"] += 7 * 4.0 * model.count_params()
    return dict(work)


def use_kerass_layers(batchnorm: bool, gelu: bool, conv: bool) -> None:
    """Train with Keras's own BatchNormalization / GELU / Conv2D computation (the step before issue 41)."""
    try:
        from cifar_pipeline.training import fast_layers
    except ImportError:  # a checkout from before the fused kernels: Keras's layers already
        return
    if batchnorm:
        fast_layers.FusedBatchNormalization.call = keras.layers.BatchNormalization.call
    if gelu:
        fast_layers.FastGELU.call = keras.layers.Activation.call
    if conv:
        fast_layers.FastConv2D.convolution_op = keras.layers.Conv2D.convolution_op


class StepClock(keras.callbacks.Callback):
    """Times every batch of epoch 2 and profiles epoch 3's batches (not its validation)."""

    def __init__(self, logdir: str) -> None:
        super().__init__()
        self.logdir, self.times, self.epoch, self.profiled_s = logdir, [], 0, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if epoch == 2:
            tf.profiler.experimental.start(self.logdir)
            self.profile_start = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1:
            self.times.append(time.perf_counter() - self.start)
        if self.epoch == 2 and batch == self.params["steps"] - 1:
            self.profiled_s = time.perf_counter() - self.profile_start
            tf.profiler.experimental.stop()


def main() -> None:
    config = json.loads(sys.argv[1])
    batch, steps = config["batch"], config["steps"]
    use_kerass_layers(*(config.get(f"keras_{name}", False) for name in ("batchnorm", "gelu", "conv")))
    settings = dataclasses.replace(train_settings([]), epochs=3, batch_size=batch)
    if config.get("widths"):
        settings = dataclasses.replace(settings, model=dataclasses.replace(settings.model, widths=config["widths"]))
    if config.get("jit_compile"):
        settings = dataclasses.replace(settings, jit_compile=True)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch * steps, 32, 32, 3), dtype=np.uint8)
    classes = config.get("classes", 10)
    labels = rng.integers(0, classes, batch * steps).astype(np.int32)
    stats = ChannelStats(mean=(125.0, 123.0, 114.0), std=(63.0, 62.0, 66.0))
    policy = precision_policy(settings.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    model = new_classifier(settings, classes, stats, images)
    with tempfile.TemporaryDirectory() as logdir:
        clock = StepClock(logdir)
        fit_classifier(model, settings, (images, labels), (images[:batch], labels[:batch]), stats, callbacks=[clock])
        groups, input_kernels, in_step = kernel_times(logdir)
    peaks = peak_gflops(bfloat16=policy == "mixed_bfloat16")
    result = {
        "batch": batch,
        "steps": steps,
        "recipe": settings.model.kind,
        "dtype_policy": policy,
        "jit_compile": bool(model.jit_compile),
        "steady_img_s": batch / statistics.median(clock.times),
        "profiled_step_s": clock.profiled_s / steps,
        "host_s_per_step": max(clock.profiled_s - in_step, 0.0) / steps,
        "kernel_s_per_step": {group: seconds / steps for group, seconds in groups.items()},
        "input_kernel_s_per_step": {kind: seconds / steps for kind, seconds in input_kernels.items()},
        "work_per_step": layer_work(model, batch),
        "peak_gflops": max(peaks.get("conv_bfloat16", 0), peaks.get("matmul_bfloat16", 0))
        or max(peaks["conv"], peaks["matmul"]),
        "bandwidth_gb_s": memory_bandwidth(),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()

"""One training-speed measurement, run in its own process (TF reads its env vars at import).

Usage: python -m benchmarks.train_speed CONFIG_JSON  -> prints one JSON line.
CONFIG keys: pipeline ("ours" | "imagedatagenerator"), network ("seed", the default, or
"fast": the README's fast network), overrides (of its recipe, dvc-style), images, batch_size,
epochs, jit_compile, autotune, augment, mixed_precision, deterministic, classes. Set TF_ENABLE_ONEDNN_OPTS in
the environment. "of peak" is against the same process's peak in the step's compute dtype.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import statistics
import sys
import time

# isort: off
import cifar_pipeline  # noqa: F401  first: it sets TF's env defaults before TF is imported, as in the train stage
import keras
import numpy as np
import tensorflow as tf

# isort: on
from benchmarks.recipes import train_settings
from cifar_pipeline.data.channel_stats import ChannelStats
from cifar_pipeline.training.hardware import cpu_has_fast_bfloat16, precision_policy
from cifar_pipeline.training.input_pipeline import steps_per_epoch, training_dataset
from cifar_pipeline.training.model import build_classifier, set_whitening
from cifar_pipeline.training.recipe import compile_classifier


def settings(network: str, overrides: list[str] | None = None):
    """The seed network or the fast one, each with its named recipe from recipes.yaml."""
    return train_settings([f"recipe={'fast' if network == 'fast' else 'seed'}", *(overrides or [])])


def forward_flops(model) -> float:
    """Multiply-adds x 2 of the conv and dense layers for one image (BN, pooling ignored)."""
    import keras

    flops = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            k_h, k_w = layer.kernel_size
            flops += 2.0 * h * w * k_h * k_w * layer.input.shape[-1] * c_out
        elif isinstance(layer, keras.layers.Dense):
            flops += 2.0 * layer.input.shape[-1] * layer.units
    return flops


def peak_gflops(repeats: int = 5, bfloat16: bool = True) -> dict[str, float]:
    """Best observed matmul and conv throughput in this process's TF configuration, in float32
    and (when asked) bfloat16, the compute dtype of `mixed_precision: auto` on CPUs with
    native bf16; elsewhere bf16 is emulated and its "peak" would take minutes to measure."""
    results = {}
    for dtype in ("float32", "bfloat16") if bfloat16 else ("float32",):
        a = tf.cast(tf.random.normal((2048, 2048)), dtype)
        x = tf.cast(tf.random.normal((128, 32, 32, 64)), dtype)
        kernel = tf.cast(tf.random.normal((3, 3, 64, 64)), dtype)
        matmul = tf.function(lambda a=a: tf.matmul(a, a))
        conv = tf.function(lambda x=x, kernel=kernel: tf.nn.conv2d(x, kernel, 1, "SAME"))
        suffix = "" if dtype == "float32" else f"_{dtype}"
        for name, fn, flops in (("matmul", matmul, 2.0 * 2048**3), ("conv", conv, 2.0 * 128 * 32 * 32 * 9 * 64 * 64)):
            results[name + suffix] = flops / best_seconds(fn, repeats) / 1e9
    return results


def best_seconds(fn, repeats: int) -> float:
    """The fastest of `repeats` calls of a tf.function, after one call that traces and warms it."""
    fn().numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn().numpy()
        best = min(best, time.perf_counter() - start)
    return best


def peak_for(policy: str, peaks: dict[str, float]) -> float:
    """The peak of the dtype the train step computes in: bfloat16 under mixed_bfloat16."""
    suffix = "_bfloat16" if policy == "mixed_bfloat16" else ""
    return max(peaks["matmul" + suffix], peaks["conv" + suffix])


class Timer(tf.keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.epoch_starts: list[float] = []
        self.batch_times: list[list[float]] = []
        self._batch_start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_starts.append(time.perf_counter())
        self.batch_times.append([])

    def on_train_batch_begin(self, batch, logs=None):
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.batch_times[-1].append(time.perf_counter() - self._batch_start)


def seed_style_dataset(images, labels, batch_size):
    """The seed's input path: legacy ImageDataGenerator doing per-image numpy augmentation."""
    generator = tf.keras.preprocessing.image.ImageDataGenerator(
        horizontal_flip=True, width_shift_range=4, height_shift_range=4, fill_mode="constant", cval=0.0
    )
    return generator.flow(images, labels, batch_size=batch_size, seed=0)


def model_and_data(config: dict) -> tuple[keras.Model, tf.data.Dataset, int]:
    """The configured network, compiled as the train stage compiles it, its training data, and
    its steps per epoch (0: the seed-style generator's own)."""
    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n, batch = config["images"], config["batch_size"]
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)  # raw pixels, as the train stage feeds
    stats = ChannelStats(mean=(125.0, 123.0, 114.0), std=(63.0, 62.0, 66.0))
    labels = rng.integers(0, config.get("classes", 10), n).astype(np.int32)

    keras.mixed_precision.set_global_policy(precision_policy(config.get("mixed_precision", "auto")))
    if config.get("deterministic"):  # as the train stage does for train.deterministic
        tf.config.experimental.enable_op_determinism()
    train = settings(config.get("network", "seed"), config.get("overrides"))
    model = build_classifier(train.model, config.get("classes", 10), stats)
    set_whitening(model, images, stats)
    compile_classifier(model, train, steps_per_epoch(n, batch))
    if config.get("jit_compile"):
        model.jit_compile = True
    if config["pipeline"] != "ours":
        return model, seed_style_dataset(images.astype(np.float32), labels, batch), 0
    augment = train.augment if config.get("augment", True) else dataclasses.replace(train.augment, flip=False, shift=0)
    data = training_dataset(images, labels, batch, augment, seed=0, fill=stats.mean)
    if config.get("autotune"):
        options = tf.data.Options()
        options.autotune.enabled = True
        data = data.with_options(options)
    return model, data, steps_per_epoch(n, batch)


def speeds(timer: Timer, end: float, n: int, batch: int) -> dict:
    """Steady and whole-epoch images per second, and the time lost outside steady batches."""
    # An epoch's wall time runs to the next epoch's start (or fit's return), so a stall while
    # an iterator shuts down is counted where the user pays for it.
    bounds = [*timer.epoch_starts, end]
    walls = [b - a for a, b in itertools.pairwise(bounds)]
    steady_batches = [t for epoch in timer.batch_times[1:] for t in epoch[1:-1]] or timer.batch_times[-1]
    # Time lost outside steady batches, epoch by epoch (so CPU clock drift across epochs
    # does not count): 1 - (epoch img/s) / (that epoch's median-batch img/s).
    gaps = [
        1 - (n / wall) / (batch / statistics.median(times))
        for wall, times in zip(walls, timer.batch_times, strict=True)
        if times
    ]
    return {
        "steady_img_s": batch / statistics.median(steady_batches),
        "epoch_wall_img_s": n / statistics.median(walls[1:]) if len(walls) > 1 else n / walls[0],
        "wall_gap": statistics.median(gaps[1:] or gaps),
        "epoch_walls_s": walls,
        "first_epoch_overhead_s": walls[0] - statistics.median(walls[1:]) if len(walls) > 1 else None,
    }


def main() -> None:
    config = json.loads(sys.argv[1])
    model, data, steps = model_and_data(config)
    timer = Timer()
    start = time.perf_counter()
    fit_steps = {"steps_per_epoch": steps} if steps else {}
    model.fit(data, epochs=config["epochs"], callbacks=[timer], verbose=0, shuffle=False, **fit_steps)
    end = time.perf_counter()
    result = speeds(timer, end, config["images"], config["batch_size"])
    train_flops = 3.0 * forward_flops(model)
    policy = keras.mixed_precision.global_policy().name
    peaks = peak_gflops(bfloat16=policy == "mixed_bfloat16" or cpu_has_fast_bfloat16())
    steady = result["steady_img_s"]
    result = {
        "config": config,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
        "dtype_policy": policy,
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "jit_compile": bool(model.jit_compile),
        **result,
        "fit_return_s": end - start,
        "train_mflop_per_image": train_flops / 1e6,
        "achieved_gflops": steady * train_flops / 1e9,
        "peak_gflops": peaks,
        "fraction_of_peak": steady * train_flops / 1e9 / peak_for(policy, peaks),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()

"""One training run of the accuracy benchmark, in its own process (TF and Keras keep global state).

Usage: python -m benchmarks.accuracy_run CONFIG_JSON  -> prints one `RESULT {json}` line.
CONFIG keys: data (a split folder as the split+normalize stages write it), contender
("pipeline" | "seed_port"), seed, epochs, overrides (dotted `key=value` strings applied
to params.yaml, as `dvc exp run -S` does; pipeline only), port (SeedPortOptions fields),
validation_only (pipeline only: skip the test set, for choosing recipes), budget_s (stop
after the last epoch that fits this many seconds of training: the same wall-clock budget for
every contender). `epochs` may be left out for a pipeline contender: its recipe's then.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

# isort: off
import cifar_pipeline  # noqa: F401  first: it sets TF's env defaults before TF is imported, as in the train stage
import keras
import numpy as np

# isort: on
from benchmarks.recipes import train_settings
from benchmarks.seed_port import SeedPortOptions, train_seed_port
from benchmarks.train_speed import forward_flops
from cifar_pipeline.core.layout import load_classes, load_part
from cifar_pipeline.core.params import flatten
from cifar_pipeline.data.channel_stats import ChannelStats
from cifar_pipeline.inference.evaluation import evaluate_probabilities
from cifar_pipeline.training.final_model import build_final_model
from cifar_pipeline.training.hardware import precision_policy
from cifar_pipeline.training.model import without_compile_state
from cifar_pipeline.training.trainer import fit_classifier, new_classifier
from cifar_pipeline.training.views import VIEWS, with_test_views


class EpochClock(keras.callbacks.Callback):
    """Each epoch's wall seconds and the process's CPU seconds (all threads): on a shared
    machine the second shows how much of the wall time the run really had."""

    def __init__(self, budget_s: float | None = None) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []
        self.budget_s = budget_s

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._cpu = time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.cpu_seconds.append(time.process_time() - self._cpu)
        # Stop before an epoch that would end past the budget (judged by the mean epoch so far).
        if self.budget_s is not None:
            spent = sum(self.seconds)
            if spent + spent / len(self.seconds) > self.budget_s:
                self.model.stop_training = True


def accuracy(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(model.predict(images, batch_size=500, verbose=0).argmax(axis=1) == labels))


def run_pipeline(config: dict, split: Path, clock: EpochClock) -> tuple[dict, np.ndarray | None, str, dict]:
    epochs = [f"train.epochs={config['epochs']}"] if config.get("epochs") else []
    settings = train_settings([*config.get("overrides", []), *epochs, f"train.seed={config['seed']}"])
    keras.utils.set_random_seed(settings.seed)
    policy = precision_policy(settings.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    classes = load_classes(split).names
    stats = ChannelStats.read(split / "stats.json")
    train = load_part(split, "train").examples
    validation = load_part(split, "val", mmap=False).examples
    classifier = new_classifier(settings, len(classes), stats, train[0])
    history = fit_classifier(classifier, settings, train, validation, stats, callbacks=[clock])
    # The exported model on validation, with each choice of test-time views and, after
    # weight averaging, with BatchNormalization's statistics as training left them: what
    # those two params are chosen by, at no extra training.
    no_views = dataclasses.replace(settings, model=dataclasses.replace(settings.model, test_views="none"))
    plain = build_final_model(classifier, no_views, train, stats)
    # Scored as the evaluate stage does: the exported model's graph (build_final_model's) on raw uint8 test images.
    model = with_test_views(plain, settings.model.test_views)
    exported = {f"val_accuracy_views_{views}": accuracy(with_test_views(plain, views), *validation) for views in VIEWS}
    exported["forward_flops"] = forward_flops(classifier)
    exported["test_views"] = len(VIEWS[settings.model.test_views])
    exported["train_params"] = flatten(settings)
    if settings.ema_momentum:
        exported["val_accuracy_stale_batchnorm"] = accuracy(without_compile_state(classifier), *validation)
    if config.get("validation_only"):
        return history.history, None, policy, exported
    probabilities = model.predict(load_part(split, "test", mmap=False).images, batch_size=500, verbose=0)
    return history.history, probabilities, policy, exported


def run_seed_port(config: dict, split: Path, clock: EpochClock) -> tuple[dict, np.ndarray, str, dict]:
    classes = load_classes(split).names
    model, history, probabilities = train_seed_port(
        *load_part(split, "train", mmap=False).examples,
        *load_part(split, "val", mmap=False).examples,
        load_part(split, "test", mmap=False).images,
        epochs=config["epochs"],
        seed=config["seed"],
        num_classes=len(classes),
        options=SeedPortOptions(**config.get("port", {})),
        callbacks=[clock],
    )
    exported = {"forward_flops": forward_flops(model), "test_views": 1}
    return history.history, probabilities, keras.mixed_precision.global_policy().name, exported


def main() -> None:
    config = json.loads(sys.argv[1])
    split = Path(config["data"])
    clock = EpochClock(config.get("budget_s"))
    start = time.perf_counter()
    runner = run_pipeline if config["contender"] == "pipeline" else run_seed_port
    history, probabilities, policy, exported = runner(config, split, clock)
    wall = time.perf_counter() - start
    # A screening run (choosing a recipe) never looks at the test set.
    test = (
        {}
        if probabilities is None
        else evaluate_probabilities(probabilities, load_part(split, "test", mmap=False).labels).metrics()
    )
    history = {key: [float(v) for v in values] for key, values in history.items()}
    result = {
        "config": config,
        "dtype_policy": policy,
        **test,
        "final_val_accuracy": history["val_accuracy"][-1],
        "final_train_accuracy": history["accuracy"][-1],
        **exported,
        "history": history,
        "epoch_seconds": clock.seconds,
        "epoch_cpu_seconds": clock.cpu_seconds,
        "train_images": len(load_part(split, "train").labels),
        "wall_s": wall,
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()

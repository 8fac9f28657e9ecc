"""One training run of the accuracy benchmark, in its own process (TF and Keras keep global state).

Usage: python benchmarks/accuracy_run.py CONFIG_JSON  -> prints one `RESULT {json}` line.
CONFIG keys: data (a split folder as the split+normalize stages write it), contender
("pipeline" | "seed_port"), seed, epochs, overrides (dotted `key=value` strings applied
to params.yaml, as `dvc exp run -S` does; pipeline only), port (SeedPortOptions fields),
validation_only (pipeline only: skip the test set, for choosing recipes).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# isort: off
import cifar_pipeline  # noqa: F401  first: it sets TF's env defaults before TF is imported, as in the train stage
import keras
import numpy as np
import yaml

# isort: on
from cifar_pipeline.evaluation import evaluate_probabilities
from cifar_pipeline.hardware import precision_policy
from cifar_pipeline.model import exportable
from cifar_pipeline.normalize import ChannelStats
from cifar_pipeline.outputs import load_array, read_json
from cifar_pipeline.params import parse_params
from cifar_pipeline.training import fit_classifier, new_classifier
from seed_port import SeedPortOptions, train_seed_port

ROOT = Path(__file__).resolve().parents[1]


class EpochClock(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`a.b.c=value` with a YAML value, like `dvc exp run -S`; the key must already exist."""
    for override in overrides:
        key, _, value = override.partition("=")
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise KeyError(f"override {override!r}: {key} is not in params.yaml")
        node[leaf] = yaml.safe_load(value)
    return raw


def run_pipeline(config: dict, split: Path, clock: EpochClock) -> tuple[dict, np.ndarray | None, str]:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    overrides = [*config.get("overrides", []), f"train.epochs={config['epochs']}", f"train.seed={config['seed']}"]
    settings = parse_params(apply_overrides(raw, overrides)).train
    keras.utils.set_random_seed(settings.seed)
    policy = precision_policy(settings.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    classes = read_json(split / "classes.json")["names"]
    stats = ChannelStats.read(split / "stats.json")
    train_images = load_array(split, "train_images")
    classifier = new_classifier(settings, len(classes), stats, len(train_images))
    history = fit_classifier(
        classifier,
        settings,
        (train_images, load_array(split, "train_labels")),
        (load_array(split, "val_images"), load_array(split, "val_labels")),
        stats,
        callbacks=[clock],
    )
    # Scored as the evaluate stage does: the saved model's graph on raw uint8 test images.
    if config.get("validation_only"):
        return history.history, None, policy
    model = exportable(classifier)
    probabilities = model.predict(load_array(split, "test_images", mmap=False), batch_size=500, verbose=0)
    return history.history, probabilities, policy


def run_seed_port(config: dict, split: Path, clock: EpochClock) -> tuple[dict, np.ndarray, str]:
    classes = read_json(split / "classes.json")["names"]
    _model, history, probabilities = train_seed_port(
        *(load_array(split, name, mmap=False) for name in ("train_images", "train_labels", "val_images", "val_labels")),
        load_array(split, "test_images", mmap=False),
        epochs=config["epochs"],
        seed=config["seed"],
        num_classes=len(classes),
        options=SeedPortOptions(**config.get("port", {})),
        callbacks=[clock],
    )
    return history.history, probabilities, keras.mixed_precision.global_policy().name


def main() -> None:
    config = json.loads(sys.argv[1])
    split = Path(config["data"])
    clock = EpochClock()
    start = time.perf_counter()
    runner = run_pipeline if config["contender"] == "pipeline" else run_seed_port
    history, probabilities, policy = runner(config, split, clock)
    wall = time.perf_counter() - start
    # A screening run (choosing a recipe) never looks at the test set.
    test = (
        {}
        if probabilities is None
        else evaluate_probabilities(probabilities, load_array(split, "test_labels", mmap=False)).metrics()
    )
    history = {key: [float(v) for v in values] for key, values in history.items()}
    result = {
        "config": config,
        "dtype_policy": policy,
        **test,
        "final_val_accuracy": history["val_accuracy"][-1],
        "final_train_accuracy": history["accuracy"][-1],
        "history": history,
        "epoch_seconds": clock.seconds,
        "wall_s": wall,
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()

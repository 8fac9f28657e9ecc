"""The train stage: fit the classifier, log every epoch to MLflow, save and log the model."""

from __future__ import annotations

import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf

from cifar_pipeline import tracking
from cifar_pipeline.figures import training_curves
from cifar_pipeline.input_pipeline import evaluation_dataset, training_dataset
from cifar_pipeline.model import build_classifier, with_normalization
from cifar_pipeline.normalize import ChannelStats
from cifar_pipeline.outputs import atomic_dir, load_array, read_json, write_csv, write_json
from cifar_pipeline.params import Params, flatten
from cifar_pipeline.schedule import scheduler_callback

HISTORY_KEYS = ("loss", "accuracy", "top5_accuracy", "val_loss", "val_accuracy", "val_top5_accuracy", "learning_rate")
MODEL_FILE = "model.keras"
RUN_FILE = "mlflow_run.json"


class EpochLogger(keras.callbacks.Callback):
    """One `log_metrics` call per epoch: the Keras logs plus rate, wall time and throughput.

    MLflow steps are 1-based epoch numbers, as Keras prints them ("Epoch 1/200").
    """

    def __init__(self, images_per_epoch: int) -> None:
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.rows: list[dict[str, float]] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        seconds = time.perf_counter() - self._started
        metrics = {key: float(value) for key, value in (logs or {}).items()}
        metrics["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        metrics["epoch_time_s"] = seconds
        metrics["images_per_second"] = self.images_per_epoch / seconds
        mlflow.log_metrics(metrics, step=epoch + 1)
        self.rows.append({"epoch": epoch + 1, **metrics})


def compile_classifier(model: keras.Model, learning_rate: float) -> None:
    """Named metric objects, so Keras logs and MLflow keys match for both datasets."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5_accuracy"),
        ],
    )


def train(
    dataset: str, params: Params, split_dir: Path, normalized_dir: Path, model_dir: Path, history_csv: Path
) -> str:
    """Train one model and return its MLflow run id (also written to `model_dir`)."""
    settings = params.train
    keras.utils.set_random_seed(settings.seed)
    classes = read_json(split_dir / "classes.json")["names"]
    stats = ChannelStats.from_json(read_json(normalized_dir / "stats.json"))
    train_images = load_array(normalized_dir, "train_images")
    train_labels = load_array(split_dir, "train_labels")
    val_images = load_array(normalized_dir, "val_images")
    val_labels = load_array(split_dir, "val_labels")

    classifier = build_classifier(settings.model, num_classes=len(classes))
    compile_classifier(classifier, settings.learning_rate)
    logged_params = {
        "dataset": dataset,
        **flatten(params.data[dataset], f"data.{dataset}."),
        **flatten(params.split, "split."),
        **flatten(settings, "train."),
        "num_classes": len(classes),
        "train_images": len(train_images),
        "val_images": len(val_images),
        "model_parameters": classifier.count_params(),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }
    logger = EpochLogger(images_per_epoch=len(train_images))
    with tracking.new_run(dataset, logged_params) as run:
        classifier.fit(
            training_dataset(train_images, train_labels, settings.batch_size, settings.augment, settings.seed),
            validation_data=evaluation_dataset(val_images, val_labels, settings.batch_size),
            epochs=settings.epochs,
            callbacks=[scheduler_callback(settings.learning_rate, settings.lr_schedule), logger],
            shuffle=False,  # the dataset shuffles (seeded) itself
            verbose=2,
        )
        model = with_normalization(classifier, stats)
        mlflow.log_figure(training_curves(logger.rows, f"{dataset}: training curves"), "plots/training_curves.png")
        log_model(model, sample=load_array(split_dir, "val_images")[:8])
        with atomic_dir(model_dir) as tmp:
            model.save(tmp / MODEL_FILE)
            write_json(tmp / RUN_FILE, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id})
        write_csv(
            history_csv,
            ["epoch", *HISTORY_KEYS],
            ([row[key] for key in ("epoch", *HISTORY_KEYS)] for row in logger.rows),
        )
    return run.info.run_id


def log_model(model: keras.Model, sample: np.ndarray) -> None:
    """Keras flavour with a uint8 signature, so pyfunc users pass raw images."""
    sample = np.asarray(sample, dtype=np.uint8)
    signature = mlflow.models.infer_signature(sample, model.predict(sample, verbose=0))
    mlflow.keras.log_model(
        model,
        name="model",
        signature=signature,
        # Pinned from what trained the model; skips MLflow's slow requirement inference.
        pip_requirements=[
            f"keras=={keras.__version__}",
            f"tensorflow=={tf.__version__}",
            f"mlflow=={mlflow.__version__}",
        ],
    )

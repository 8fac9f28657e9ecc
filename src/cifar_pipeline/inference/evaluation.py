"""Test-set numbers from one pass of predictions: loss, top-1/top-5, per class, confusion."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow.data.meta_dataset import MetaDataset

from cifar_pipeline.core.errors import PipelineError
from cifar_pipeline.core.files import atomic_file, read_json, write_csv, write_json
from cifar_pipeline.core.layout import RUN_FILE, load_classes, load_part
from cifar_pipeline.core.metric_names import TEST_KEYS
from cifar_pipeline.inference.loading import LoadedModel, load_model
from cifar_pipeline.tracking import mlflow_datasets, mlflow_models, mlflow_runs, mlflow_store

EPSILON = 1e-7  # Keras clips probabilities the same way before taking the log


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    top5_accuracy: float
    confusion: np.ndarray  # [actual, predicted] counts
    labels: np.ndarray  # the actual class of each image, in order
    predictions: np.ndarray

    @property
    def test_images_per_class(self) -> np.ndarray:
        return self.confusion.sum(axis=1)

    @property
    def per_class_accuracy(self) -> np.ndarray:
        """NaN for a class with no test images (a small `split.max_test_images`): unknown, not 0."""
        totals = self.test_images_per_class
        return np.divide(np.diag(self.confusion), totals, out=np.full(len(totals), np.nan), where=totals > 0)

    def per_class(self, names: list[str]) -> dict[str, dict[str, float | int | None]]:
        """Per class: accuracy (None without test images) and how many test images it had."""
        return {
            name: {"accuracy": None if np.isnan(accuracy) else round(float(accuracy), 6), "test_images": int(count)}
            for name, accuracy, count in zip(names, self.per_class_accuracy, self.test_images_per_class, strict=True)
        }

    def metrics(self) -> dict[str, float]:
        return dict(zip(TEST_KEYS, (self.loss, self.accuracy, self.top5_accuracy), strict=True))


def evaluate_probabilities(probabilities: np.ndarray, labels: np.ndarray) -> Evaluation:
    labels = np.asarray(labels, dtype=np.int64)
    n, num_classes = probabilities.shape
    picked = probabilities[np.arange(n), labels]
    loss = float(np.mean(-np.log(np.clip(picked, EPSILON, 1.0))))
    predictions = probabilities.argmax(axis=1)
    k = min(5, num_classes)
    top_k = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    top5 = float(np.mean((top_k == labels[:, None]).any(axis=1)))
    confusion = np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )
    return Evaluation(
        loss=loss,
        accuracy=float(np.mean(predictions == labels)),
        top5_accuracy=top5,
        confusion=confusion,
        labels=labels,
        predictions=predictions,
    )


def check_classes(model: LoadedModel, split_dir: Path, what: str, fix: str) -> None:
    """A model scored on a split must name the split's classes, in its order."""
    if model.class_names != load_classes(split_dir).names:
        raise PipelineError(f"{what} was trained on other classes than {split_dir} holds; {fix}")


def score(model: LoadedModel, split_dir: Path, what: str, fix: str = "run `dvc repro` to retrain it") -> Evaluation:
    """A model's numbers on a split's raw uint8 test images: the evaluate stage's, and the register
    stage's when it scores the champion on a candidate's test images."""
    check_classes(model, split_dir, what, fix)
    test = load_part(split_dir, "test", mmap=False)
    return evaluate_probabilities(model.predict(test.images), test.labels)


def test_images(dataset: str, trained: dict[str, str], split_dir: Path) -> MetaDataset:
    """The split's test images as the MLflow dataset their metrics are linked to."""
    return mlflow_datasets.images_dataset(
        dataset,
        "test",
        trained["data.url"],
        trained["data.md5"],
        trained["data.label_mode"],
        load_part(split_dir, "test").indices,
    )


@mlflow_store.server_errors()
def evaluate_model(
    dataset: str, split_dir: Path, model_dir: Path, metrics_json: Path, confusion_csv: Path, per_class_csv: Path
) -> None:
    """Score the saved model on raw uint8 test images (exactly what users will feed it).

    The metrics go to the training run and, linked to the test images, to its logged model:
    MLflow 3's Models tab ranks by those, and the register stage reads them from there.
    """
    names = load_classes(split_dir).names
    # What `predict` loads: the same code, the same graph.
    result = score(load_model(model_dir), split_dir, str(model_dir))
    per_class = result.per_class(names)
    missing = [name for name, row in per_class.items() if not row["test_images"]]

    trained_with = read_json(model_dir / RUN_FILE)
    run_id = trained_with["run_id"]
    model_id = mlflow_models.model_id_of(trained_with.get("model_uri"))
    with mlflow_runs.reopen_run(run_id):
        run = mlflow.get_run(run_id)
        data = test_images(dataset, run.data.params, split_dir)  # params: the archive it was trained from
        mlflow.log_input(data, context="test")
        held = mlflow_models.model_scores(model_id, data.digest) if model_id else run.data.metrics
        # Once: a rerun after a kill must not append the same values to the metric history again.
        new = {k: v for k, v in result.metrics().items() if held.get(k) != v}
        if new:
            mlflow.log_metrics(new, model_id=model_id, dataset=data)
        with mlflow_runs.artifact_writes():
            mlflow.log_dict(per_class, "metrics/per_class_accuracy.json")  # None = no test images
            # matplotlib only where a figure is drawn: the register stage imports this module too
            from cifar_pipeline.tracking.figures import confusion_matrix

            figure = confusion_matrix(result.confusion, names, f"{dataset}: test confusion matrix")
            mlflow.log_figure(figure, "plots/confusion_matrix.png")
    # Outputs only once the run has ended: a store that fails before then leaves none.
    with atomic_file(metrics_json) as tmp:
        write_json(tmp, result.metrics())
    _write_plots(result, names, per_class, confusion_csv, per_class_csv)
    print(f"{dataset}: " + ", ".join(f"{key} {value:.4f}" for key, value in result.metrics().items()))
    if missing:
        print(
            f"{dataset}: {len(missing)} of {len(names)} classes have no test images, so no accuracy "
            f"(raise split.max_test_images): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
        )


def _write_plots(
    result: Evaluation, names: list[str], per_class: dict, confusion_csv: Path, per_class_csv: Path
) -> None:
    """DVC's confusion-matrix and per-class plot data."""
    write_csv(
        confusion_csv,
        ["actual", "predicted"],
        zip([names[i] for i in result.labels], [names[i] for i in result.predictions], strict=True),
    )
    write_csv(
        per_class_csv,
        ["class", "accuracy", "test_images"],  # accuracy empty: no test images
        ((name, "" if v["accuracy"] is None else v["accuracy"], v["test_images"]) for name, v in per_class.items()),
    )

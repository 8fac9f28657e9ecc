"""The export stage: convert the trained model to each format in `export.formats`, score every
file on the test images by the evaluate stage's rules, and record one table: `metrics/`,
the training run (a metric per format and number) and its logged model (the table as an artifact).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import keras
import mlflow
import numpy as np
from mlflow import MlflowClient

from cifar_pipeline.core.errors import PipelineError, first_line
from cifar_pipeline.core.files import atomic_dir, atomic_file, read_json, write_json
from cifar_pipeline.core.layout import CLASSES_FILE, EXPORT_FILES, MODEL_FILE, RUN_FILE, load_part
from cifar_pipeline.core.params import ExportParams
from cifar_pipeline.export import scoring
from cifar_pipeline.export.convert import CONVERTERS, PACKAGES, float32_copy
from cifar_pipeline.inference import exported
from cifar_pipeline.inference.evaluation import check_classes, test_images
from cifar_pipeline.inference.loading import LoadedModel, load_model
from cifar_pipeline.tracking import mlflow_models, mlflow_runs

ORIGINAL = "keras"  # the table's row for the trained `.keras` model, as `cifar-predict` runs it
TABLE_ARTIFACT = "export_table.json"  # beside the logged model's files
CALIBRATION_SEED = 0  # which training images calibrate int8: fixed, so a rerun converts the same way


class ExportError(PipelineError):
    """A format could not be converted or its file could not be run."""


def calibration_images(split_dir: Path, count: int) -> np.ndarray:
    """`count` training images (never a test or validation image), the same ones every run, in index order."""
    train = load_part(split_dir, "train").images
    chosen = np.random.default_rng(CALIBRATION_SEED).choice(len(train), min(count, len(train)), replace=False)
    return np.asarray(train[np.sort(chosen)])


def convert(name: str, model: keras.Model, out: Path, calibration: np.ndarray) -> None:
    """One format's file at `out`, or one line naming the format and the fix."""
    remove = f"or remove {name} from export.formats (`dvc exp run -S 'export.formats=[...]'`)"
    try:
        CONVERTERS[name](model, out, calibration)
    except ImportError as err:
        package = PACKAGES.get(name, "tensorflow")
        raise ExportError(
            f"export {name}: {package} is not installed ({first_line(err)}); pip install -r requirements.txt, {remove}"
        ) from None
    except OSError:
        raise  # a full disk or a refused write: the stage runner names the place
    except Exception as err:  # each converter has its own errors for an op it cannot convert
        raise ExportError(
            f"export {name}: the converter failed on this model ({type(err).__name__}: {first_line(err)}); "
            f"train another network (train.model), {remove}"
        ) from None


def score_file(name: str, path: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    kind = exported.format_of(path)
    try:
        predict = exported.LOADERS[kind](path)
        return scoring.scored_row(predict, path, images, labels)
    except OSError:
        raise
    except Exception as err:
        raise ExportError(
            f"export {name}: the exported file does not run ({type(err).__name__}: {first_line(err)}); "
            f"remove {name} from export.formats"
        ) from None


def original_row(
    model: LoadedModel, model_dir: Path, images: np.ndarray, evaluated: dict[str, float]
) -> dict[str, float]:
    """The `.keras` model's row: its accuracy is the evaluate stage's (the same images, already
    scored); its latency is measured here, through the code `cifar-predict` runs."""
    return {
        "test_accuracy": evaluated["test_accuracy"],
        "test_top5_accuracy": evaluated["test_top5_accuracy"],
        "size_mb": scoring.size_mb(model_dir / MODEL_FILE),
        "latency_b1_ms": scoring.single_image_ms(model.predict, images),
        "latency_b256_ms": scoring.batch_ms(model.predict, images),
    }


def export_formats(
    dataset: str,
    split_dir: Path,
    model_dir: Path,
    metrics_json: Path,
    out_dir: Path,
    table_json: Path,
    settings: ExportParams,
) -> None:
    original = load_model(model_dir)
    check_classes(original, split_dir, str(model_dir), "run `dvc repro`")
    test = load_part(split_dir, "test", mmap=False)
    table = {ORIGINAL: original_row(original, model_dir, test.images, read_json(metrics_json))}
    print(_line(dataset, ORIGINAL, table[ORIGINAL], table[ORIGINAL]))
    calibration = calibration_images(split_dir, settings.calibration_images)
    model = float32_copy(original.keras_model)
    with atomic_dir(out_dir) as folder:
        shutil.copy2(model_dir / CLASSES_FILE, folder / CLASSES_FILE)  # cifar-predict reads the names beside a file
        for name in settings.formats:
            path = folder / EXPORT_FILES[name]
            convert(name, model, path, calibration)
            table[name] = score_file(name, path, test.images, test.labels)
            print(_line(dataset, name, table[name], table[ORIGINAL]))
        table = {
            name: scoring.rounded({**row, "accuracy_change": row["test_accuracy"] - table[ORIGINAL]["test_accuracy"]})
            for name, row in table.items()
        }
        _log(dataset, split_dir, model_dir, table)
    with atomic_file(table_json) as tmp:
        write_json(tmp, table)


def _line(dataset: str, name: str, row: dict[str, float], original: dict[str, float]) -> str:
    change = row["test_accuracy"] - original["test_accuracy"]
    return (
        f"{dataset}: {name:<14} test accuracy {row['test_accuracy']:.4f} ({change:+.4f}), {row['size_mb']:.2f} MB, "
        f"{row['latency_b1_ms']:.2f} ms at batch 1, {row['latency_b256_ms']:.3f} ms/image at batch {scoring.BATCH}"
    )


def _log(dataset: str, split_dir: Path, model_dir: Path, table: dict[str, dict[str, float]]) -> None:
    """A metric `<format>/<number>` per format on the training run, linked to its logged model and
    the test images (the Models tab shows them), and the table as the logged model's artifact."""
    trained_with = read_json(model_dir / RUN_FILE)
    run_id = trained_with["run_id"]
    model_id = mlflow_models.model_id_of(trained_with.get("model_uri"))
    with mlflow_runs.reopen_run(run_id):
        data = test_images(dataset, mlflow.get_run(run_id).data.params, split_dir)
        metrics = {
            f"{name}/{key}": value for name, row in table.items() if name != ORIGINAL for key, value in row.items()
        }
        if metrics:
            mlflow.log_metrics(metrics, model_id=model_id, dataset=data)
        with mlflow_runs.artifact_writes(), tempfile.TemporaryDirectory(prefix="export-table-") as folder:
            path = Path(folder) / TABLE_ARTIFACT
            write_json(path, table)
            if model_id:
                MlflowClient().log_model_artifact(model_id, str(path))
            else:
                mlflow.log_artifact(str(path))

"""A trained model, from wherever it lives, with its class names: evaluate and `predict` share this.

Four sources: a model folder or `.keras` file (the train stage's `models/<dataset>/`, class
names in `classes.json` beside it), an exported file (the export stage's `exports/<dataset>/`:
a SavedModel folder, `.tflite` or `.onnx`, chosen by extension), and the MLflow URIs `runs:/<id>/model` and
`models:/<name>@<alias>` or `models:/<name>/<version>` (class names in the logged
model's metadata). Every source takes raw uint8 images (N, 32, 32, 3): the model
normalises its own input, so there is no preprocessing to repeat here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cifar_pipeline.core.errors import PipelineError, first_line
from cifar_pipeline.core.files import read_json
from cifar_pipeline.core.layout import CLASSES_FILE, MODEL_FILE
from cifar_pipeline.inference import exported
from cifar_pipeline.tracking import mlflow_store

PREDICT_BATCH = 500


class ModelLoadError(PipelineError):
    """The model named cannot be found or loaded."""


@dataclass(frozen=True)
class LoadedModel:
    class_names: list[str]
    predict_fn: Callable[[np.ndarray], np.ndarray]
    # The Keras model behind `predict_fn` when the source is a `.keras` file (None otherwise): the
    # export stage converts the very model it timed instead of loading the file a second time.
    keras_model: Any = None

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N, classes) for uint8 images (N, 32, 32, 3)."""
        return np.asarray(self.predict_fn(np.asarray(images, dtype=np.uint8)), dtype=np.float64)


def is_mlflow_uri(source: str) -> bool:
    return source.startswith(("models:/", "runs:/"))


def load_model(source: str | Path) -> LoadedModel:
    text = str(source)
    return _load_mlflow(text) if is_mlflow_uri(text) else _load_file(Path(text))


# What a user installs for each exported format's runtime.
RUNTIMES = {"saved_model": "tensorflow", "litert": "ai-edge-litert", "onnx": "onnxruntime"}
KINDS = {"saved_model": "SavedModel", "litert": "LiteRT", "onnx": "ONNX"}


def _load_file(path: Path) -> LoadedModel:
    """A model folder, a `.keras` file, or an exported file: a SavedModel folder, `.tflite`, `.onnx`."""
    kind = exported.format_of(path)
    if kind is None and path.is_dir():
        path = path / MODEL_FILE
    if not path.exists():
        raise ModelLoadError(
            f"no model at {path}: give a model folder (models/<dataset>), a .keras file, an exported model "
            f"(exports/<dataset>/: saved_model, .tflite, .onnx), runs:/<run id>/model or models:/<name>@<alias>"
        )
    classes = path.parent / CLASSES_FILE
    if not classes.is_file():
        raise ModelLoadError(f"{path} has no {CLASSES_FILE} beside it, so its class names are unknown; retrain it")
    names = read_json(classes)["names"]
    if kind is None:
        return _load_keras(path, names)
    try:
        predict = exported.LOADERS[kind](path)
    except ImportError as err:
        raise ModelLoadError(
            f"{path} is a {KINDS[kind]} model, whose runtime is not installed ({first_line(err)}): "
            f"pip install {RUNTIMES[kind]} (or pip install -r requirements.txt)"
        ) from None
    except Exception as err:  # each runtime has its own errors for a file that is not a model
        raise ModelLoadError(
            f"{path} is not a {KINDS[kind]} model this package can load ({type(err).__name__}: {first_line(err)}); "
            f"export it again: `dvc repro export@<dataset>`"
        ) from None

    return LoadedModel(names, _in_parts(predict, len(names)))


def _in_parts(predict: Callable[[np.ndarray], np.ndarray], classes: int) -> Callable[[np.ndarray], np.ndarray]:
    """`predict` called on at most PREDICT_BATCH images at a time: bounded memory, and the logged
    model refuses more than CIFAR_SERVE_MAX_IMAGES (1,024) per call."""

    def in_parts(images: np.ndarray) -> np.ndarray:
        parts = [np.asarray(predict(images[i : i + PREDICT_BATCH])) for i in range(0, len(images), PREDICT_BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0, classes), np.float32)

    return in_parts


def _load_keras(path: Path, names: list[str]) -> LoadedModel:
    import keras

    try:
        model = keras.models.load_model(path)
    except Exception as err:  # Keras raises ValueError, OSError, zip errors for a file that is not a model
        raise ModelLoadError(
            f"{path} is not a Keras model this package can load ({type(err).__name__}: {err})"
        ) from None
    return LoadedModel(names, lambda x: model.predict(x, batch_size=PREDICT_BATCH, verbose=0), model)


def _why_not_loaded(uri: str, err: BaseException) -> str:
    """A model the store does not know, or one it knows whose files are gone from the artifact store."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    where = mlflow_store.tracking_uri()
    name, _, which = uri.removeprefix("models:/").partition("@" if "@" in uri else "/")
    version = None
    if uri.startswith("models:/") and which:
        client = MlflowClient()
        with contextlib.suppress(MlflowException):
            lookup = client.get_model_version_by_alias if "@" in uri else client.get_model_version
            found = lookup(name, which)
            version = found.version, found.source
    if version is None:
        return (
            f"cannot load {uri} from {where}: {first_line(err)}; check the name, alias or run id "
            f"(`mlflow ui` lists them under Models)"
        )
    return (
        f"cannot load {uri}: it is v{version[0]} of {name} in {where}, but its files ({version[1]}) cannot be read "
        f"from the artifact store ({first_line(err, 160)}); restore them, or point the alias at another version "
        f"(`mlflow ui`: Models -> {name})"
    )


def _load_mlflow(uri: str) -> LoadedModel:
    import mlflow
    from mlflow.exceptions import MlflowException

    store = mlflow_store.project_root() / "mlflow.db"
    if not os.environ.get("MLFLOW_TRACKING_URI") and not store.is_file():  # MLflow would create an empty one
        raise ModelLoadError(
            f"cannot load {uri}: there is no MLflow store here ({store} does not exist); run this in the "
            f"project's root, where `dvc repro` made it, or set MLFLOW_TRACKING_URI to the store"
        )
    mlflow_store.use_store()
    try:
        model = mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as err:
        raise ModelLoadError(_why_not_loaded(uri, err)) from None
    names = (model.metadata.metadata or {}).get("class_names")
    if not names:
        raise ModelLoadError(
            f"{uri} carries no class names in its metadata (not a model this pipeline logged); "
            f"use one it logged, or its model folder"
        )

    return LoadedModel(list(names), _in_parts(model.predict, len(names)))

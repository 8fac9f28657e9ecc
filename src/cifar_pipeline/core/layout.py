"""The files inside stage folders and their schemas, with typed loaders and writers: the one
place a folder's file names are spelled, so a stage that writes one and the stages that read
it cannot drift apart.

Three folders hold a `classes.json`, each with its own schema: the raw folder's maps every
label field to its names, the split's and the model's hold one label mode's names (the
model's also its dataset). Their loaders below say which is which.

Imports only numpy and core, so a stage that only reads a folder does not import, and so in
dvc.yaml does not depend on, the code that writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifar_pipeline.core.files import load_array, read_json, save_arrays, write_json

# A model folder (the train stage's output).
MODEL_FILE = "model.keras"
RUN_FILE = "mlflow_run.json"  # {"run_id": ..., "model_uri": ...}
CLASSES_FILE = "classes.json"  # in each of the three folders; schemas above

PARTS = ("train", "val", "test")

# An export folder (the export stage's output): each format's file, and the model's classes.json.
EXPORT_FILES = {
    "saved_model": "saved_model",  # a folder: TF Serving's layout
    "litert_float16": "model_float16.tflite",
    "litert_int8": "model_int8.tflite",
    "onnx": "model.onnx",
}


@dataclass(frozen=True)
class RawDataset:
    """A raw folder (the download stage's output), as the archive holds it: uint8 NHWC images,
    every label field."""

    train_images: np.ndarray
    train_labels: dict[str, np.ndarray]
    test_images: np.ndarray
    test_labels: dict[str, np.ndarray]
    class_names: dict[str, list[str]]


def write_raw(folder: Path, raw: RawDataset) -> None:
    save_arrays(folder, train_images=raw.train_images, test_images=raw.test_images)
    for part, labels in (("train", raw.train_labels), ("test", raw.test_labels)):
        save_arrays(folder, **{f"{part}_{field}": values for field, values in labels.items()})
    write_json(folder / CLASSES_FILE, raw.class_names)


def load_raw(folder: Path, label_mode: str) -> RawDataset:
    """The raw images (mapped, read when used) and one label field, which must exist."""
    return RawDataset(
        train_images=load_array(folder, "train_images"),
        train_labels={label_mode: load_array(folder, f"train_{label_mode}", mmap=False)},
        test_images=load_array(folder, "test_images"),
        test_labels={label_mode: load_array(folder, f"test_{label_mode}", mmap=False)},
        class_names={label_mode: read_json(folder / CLASSES_FILE)[label_mode]},
    )


@dataclass(frozen=True)
class Classes:
    """The class names of one label mode, in label order."""

    names: list[str]
    label_mode: str


@dataclass(frozen=True)
class Part:
    """One part of a split: images (uint8 NHWC), their labels, and their positions in the raw
    train or test arrays (what MLflow's dataset digest and the run's identity are made of)."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray

    @property
    def examples(self) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels), the pair Keras fits on and `fit_classifier`/`build_final_model` take."""
        return self.images, self.labels


@dataclass(frozen=True)
class Split:
    """A split folder (the split stage's output)."""

    train: Part
    val: Part
    test: Part
    classes: Classes


def write_split(folder: Path, split: Split) -> None:
    for name in PARTS:
        part: Part = getattr(split, name)
        save_arrays(folder, **{f"{name}_images": part.images, f"{name}_labels": part.labels})
        save_arrays(folder, **{f"{name}_indices": part.indices})
    write_json(folder / CLASSES_FILE, {"label_mode": split.classes.label_mode, "names": split.classes.names})


def load_part(folder: Path, name: str, mmap: bool = True) -> Part:
    """`mmap`: arrays mapped and read when used (the default); False reads them into memory."""
    arrays = (load_array(folder, f"{name}_{kind}", mmap=mmap) for kind in ("images", "labels", "indices"))
    return Part(*arrays)


def load_images(folder: Path, name: str) -> np.ndarray:
    """One part's images alone, mapped: what the channel statistics read."""
    return load_array(folder, f"{name}_images")


def load_classes(folder: Path) -> Classes:
    classes = read_json(folder / CLASSES_FILE)
    return Classes(names=classes["names"], label_mode=classes["label_mode"])


def load_split(folder: Path, mmap: bool = True) -> Split:
    return Split(*(load_part(folder, name, mmap) for name in PARTS), classes=load_classes(folder))


def split_identity_files(folder: Path) -> list[Path]:
    """The split files that make two training runs the same run: its classes and which raw
    images it trains and validates on (the images themselves follow from those)."""
    return [folder / CLASSES_FILE, folder / "train_indices.npy", folder / "val_indices.npy"]

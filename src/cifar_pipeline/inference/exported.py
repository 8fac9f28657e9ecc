"""Run an exported model file (the export stage's formats) the way the `.keras` model runs:
raw uint8 images (N, 32, 32, 3) in, class probabilities out.

Each format's runtime is imported only when a file of that format is loaded, so `cifar-predict`
on a `.keras` file never needs onnxruntime.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]

SAVED_MODEL_FILE = "saved_model.pb"  # what marks a folder as a SavedModel


def format_of(path: Path) -> str | None:
    """The exported format a path holds, by its extension (a SavedModel: a folder with saved_model.pb)."""
    if path.is_dir():
        return "saved_model" if (path / SAVED_MODEL_FILE).is_file() else None
    return {".tflite": "litert", ".onnx": "onnx"}.get(path.suffix.lower())


def threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def saved_model(path: Path) -> Predict:
    import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    (argument,) = serve.structured_input_signature[1]  # one input: the images
    (output,) = serve.structured_outputs  # one output: the probabilities

    def predict(images: np.ndarray) -> np.ndarray:
        return serve(**{argument: tf.constant(images, tf.uint8)})[output].numpy()

    return predict


def litert(path: Path) -> Predict:
    """LiteRT's own runtime, not TensorFlow's deprecated `tf.lite.Interpreter`, which crashes the
    process (a segmentation fault) on a damaged file where this one verifies it and raises."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(path), num_threads=threads())
    (given,) = interpreter.get_input_details()
    try:
        interpreter.allocate_tensors()
        interpreter.set_tensor(given["index"], np.zeros(given["shape"], given["dtype"]))
        interpreter.invoke()
    except RuntimeError as err:
        if "XNNPACK" not in str(err):
            raise
        # XNNPACK (LiteRT's fast CPU kernels) refuses some int8 graphs, such as one whose layer
        # never fired on the calibration images (a scale near 0); LiteRT's own kernels run them.
        print(f"note: {path}: XNNPACK cannot run this model; running it on LiteRT's reference kernels", file=sys.stderr)
        interpreter = Interpreter(
            model_path=str(path),
            num_threads=threads(),
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    (taken,) = interpreter.get_output_details()
    shape: list[tuple[int, ...]] = [()]

    def predict(images: np.ndarray) -> np.ndarray:
        if images.shape != shape[0]:  # a new batch size: the interpreter plans its memory for one shape
            interpreter.resize_tensor_input(given["index"], images.shape)
            interpreter.allocate_tensors()
            shape[0] = images.shape
        interpreter.set_tensor(given["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(taken["index"]).copy()

    return predict


def onnx(path: Path) -> Predict:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads()
    options.log_severity_level = 3  # errors only: its warnings are not the user's to act on
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()

    def predict(images: np.ndarray) -> np.ndarray:
        return session.run(None, {given.name: images})[0]

    return predict


LOADERS: dict[str, Callable[[Path], Predict]] = {"saved_model": saved_model, "litert": litert, "onnx": onnx}

"""One converter per exported format. Each file takes what the `.keras` model takes, raw uint8
images (N, 32, 32, 3), and gives its class probabilities in the same order: normalisation and
the test-time views are layers of the model, so they travel inside every file.

Every converter starts from a float32 copy of the model: a model trained under a bfloat16
policy holds bfloat16 casts that LiteRT cannot convert, and the float32 copy computes what the
`.keras` model computes, a little more exactly.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

IMAGE_BATCH = (None, 32, 32, 3)
ONNX_OPSET = 17  # onnxruntime 1.17+ runs it; tf2onnx's tested range


def float32_copy(model: keras.Model) -> keras.Model:
    """`model` with every layer's dtype policy float32 and the same weights (variables are float32 under any policy)."""

    def float32(config: Any) -> Any:
        if isinstance(config, dict):
            if config.get("class_name") == "DTypePolicy":
                return {**config, "config": {"name": "float32"}}
            return {key: float32(value) for key, value in config.items()}
        if isinstance(config, list):
            return [float32(value) for value in config]
        return config

    copy = keras.Model.from_config(float32(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def saved_model(model: keras.Model, out: Path, calibration: np.ndarray) -> None:
    """TF Serving's format: signature `serving_default`, input `images` (uint8), output `probabilities`."""
    _saved_model(model, out, tf.uint8)


def _saved_model(model: keras.Model, out: Path, dtype: tf.DType) -> None:
    """Saved with `tf.saved_model.save`, not Keras's `model.export`, which stores every weight twice
    (keras-team/keras#23553, open): the module tracks the very `tf.Variable`s the function reads."""
    module = tf.Module()
    module.weights = [variable.value for variable in model.variables]
    module.serve = tf.function(
        lambda images: {"probabilities": model(tf.cast(images, tf.float32))},
        input_signature=[tf.TensorSpec(IMAGE_BATCH, dtype, name="images")],
    )
    tf.saved_model.save(module, str(out), signatures={"serving_default": module.serve.get_concrete_function()})


def litert_float16(model: keras.Model, out: Path, calibration: np.ndarray) -> None:
    """Weights stored in float16 (half the size), computed in float32."""
    with tempfile.TemporaryDirectory(prefix="export-") as folder:
        _saved_model(model, Path(folder), tf.uint8)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
        out.write_bytes(converter.convert())


def litert_int8(model: keras.Model, out: Path, calibration: np.ndarray) -> None:
    """Full-integer: int8 weights and activations, ranges measured on `calibration` (training images).

    Converted from a float input that the calibration fills with pixel values 0-255, so the
    uint8 input's quantization is scale 1, zero point 0: the file takes raw pixels unchanged.
    """

    def batches() -> Iterator[list[np.ndarray]]:
        for start in range(0, len(calibration), 64):
            yield [calibration[start : start + 64].astype(np.float32)]

    with tempfile.TemporaryDirectory(prefix="export-") as folder:
        _saved_model(model, Path(folder), tf.float32)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = batches
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        out.write_bytes(converter.convert())


def onnx(model: keras.Model, out: Path, calibration: np.ndarray) -> None:
    """For onnxruntime, through tf2onnx on the frozen graph (tf2onnx's own Keras and function
    paths leave Keras 3's normalisation constants as unfed inputs)."""
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    tf.get_logger().setLevel("ERROR")  # tf2onnx calls TF1 graph APIs, each with a deprecation warning
    serve = tf.function(lambda image: model(tf.cast(image, tf.float32)))
    frozen = convert_variables_to_constants_v2(
        serve.get_concrete_function(tf.TensorSpec(IMAGE_BATCH, tf.uint8, "image"))
    )
    tf2onnx.convert.from_graph_def(
        frozen.graph.as_graph_def(),
        input_names=[t.name for t in frozen.inputs],
        output_names=[t.name for t in frozen.outputs],
        opset=ONNX_OPSET,
        custom_op_handlers={"Erfc": (_erfc, [])},
        output_path=str(out),
    )


def _erfc(ctx, node, name, args):
    """erfc(x) = 1 - erf(x): Keras's exact GELU uses Erfc, which ONNX (and so tf2onnx) lacks."""
    from tf2onnx import utils

    erf = ctx.make_node("Erf", [node.input[0]]).output[0]
    one = ctx.make_const(utils.make_name("one"), np.array(1, np.float32)).output[0]
    node.type = "Sub"
    ctx.replace_inputs(node, [one, erf])


CONVERTERS: dict[str, Callable[[keras.Model, Path, np.ndarray], None]] = {
    "saved_model": saved_model,
    "litert_float16": litert_float16,
    "litert_int8": litert_int8,
    "onnx": onnx,
}
# The package each converter needs beyond TensorFlow, for the error when it is missing.
PACKAGES = {"onnx": "tf2onnx"}

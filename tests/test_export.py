"""The export stage's formats, made from a tiny airbench network trained under the bfloat16
policy with its 6 test-time views: each file takes raw uint8 images, answers what the `.keras`
model answers through the same loader `cifar-predict` uses, and a broken converter or file is
one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from cifar_pipeline.core.files import write_json
from cifar_pipeline.core.layout import CLASSES_FILE, EXPORT_FILES, MODEL_FILE, Classes, Part, Split, write_split
from cifar_pipeline.core.params import ExportParams
from cifar_pipeline.export import exporter
from cifar_pipeline.export.convert import CONVERTERS, float32_copy
from cifar_pipeline.inference import predict
from cifar_pipeline.inference.loading import ModelLoadError, load_model
from cifar_pipeline.training.model import HEAD_LAYER, without_compile_state
from cifar_pipeline.training.views import with_test_views
from test_airbench_pieces import model_for, tiny_settings

NAMES = [f"class{i}" for i in range(10)]
IMAGES = np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """models/<d>-like folder (model.keras, classes.json) and every format converted beside it."""
    folder = tmp_path_factory.mktemp("export")
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        # what the train stage saves: Keras's own layers in place of the training kernels
        model = without_compile_state(model_for(tiny_settings(model={"test_views": "flip_translate"})))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    head = model.get_layer(HEAD_LAYER)
    head.set_weights([w * 30 for w in head.get_weights()])  # decisive answers, as a trained model gives
    model = with_test_views(model, "flip_translate")
    model.save(folder / MODEL_FILE)
    write_json(folder / CLASSES_FILE, {"names": NAMES})
    calibration = np.random.default_rng(2).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    copy = float32_copy(model)
    for name, convert in CONVERTERS.items():
        convert(copy, folder / EXPORT_FILES[name], calibration)
    return folder


def answers(path: Path) -> np.ndarray:
    loaded = load_model(path)
    assert loaded.class_names == NAMES
    return loaded.predict(IMAGES)


@pytest.mark.parametrize("name", ["saved_model", "litert_float16", "onnx"])
def test_float_formats_answer_what_the_keras_model_answers(folder, name):
    original, exported = answers(folder), answers(folder / EXPORT_FILES[name])
    assert exported.shape == (len(IMAGES), 10)
    # bfloat16 (the .keras model) against float32 computation: the same classes, close probabilities
    assert (exported.argmax(1) == original.argmax(1)).mean() >= 0.9
    assert np.abs(exported - original).max() < 0.05


def test_the_saved_model_stores_each_weight_once(folder):
    """Keras's own `model.export` stores every weight twice (keras-team/keras#23553)."""
    weights = keras.models.load_model(folder / MODEL_FILE).count_params() * 4
    stored = sum(p.stat().st_size for p in (folder / EXPORT_FILES["saved_model"] / "variables").iterdir())
    assert weights <= stored < 1.2 * weights


def test_int8_takes_raw_pixels_and_keeps_the_answers_within_quantisation_error(folder):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(folder / EXPORT_FILES["litert_int8"]))
    (given,) = interpreter.get_input_details()
    assert given["dtype"] == np.uint8 and given["quantization"] == (1.0, 0)  # pixel value = stored value
    original, exported = answers(folder), answers(folder / EXPORT_FILES["litert_int8"])
    assert (exported.argmax(1) == original.argmax(1)).mean() >= 0.8
    assert np.abs(exported - original).mean() < 0.05


def test_an_int8_model_that_xnnpack_refuses_runs_on_litert_reference_kernels(tmp_path, capsys):
    """A layer that never fires on the calibration images gets a scale near 0, and XNNPACK refuses
    the graph ("failed to prepare"); a collapsed one-epoch model did so in a queued experiment."""
    from cifar_pipeline.inference import exported
    from cifar_pipeline.training.model import build_classifier
    from test_model import STATS, TINY

    model = build_classifier(TINY, 10, STATS)
    dense = next(
        layer for layer in model.layers if isinstance(layer, keras.layers.Dense) and layer.name != "probabilities"
    )
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel, np.full_like(bias, -1e3)])  # its ReLU outputs 0 for every image
    CONVERTERS["litert_int8"](float32_copy(model), tmp_path / "dead.tflite", IMAGES[:16])
    probabilities = exported.litert(tmp_path / "dead.tflite")(IMAGES[:3])
    assert probabilities.shape == (3, 10) and np.allclose(probabilities.sum(1), 1.0, atol=0.02)
    assert "XNNPACK cannot run this model; running it on LiteRT's reference kernels" in capsys.readouterr().err


def test_cifar_predict_reads_each_format_by_its_extension(folder, capsys):
    np.save(folder / "images.npy", IMAGES[:2])
    outputs = {}
    for name in ("keras", *EXPORT_FILES):
        path = folder if name == "keras" else folder / EXPORT_FILES[name]
        assert predict.main([str(path), str(folder / "images.npy"), "--format", "json"]) == 0
        outputs[name] = [row["top5"][0]["class"] for row in json.loads(capsys.readouterr().out)]
    assert all(top == outputs["keras"] for name, top in outputs.items() if name != "litert_int8"), outputs


@pytest.mark.parametrize("name", list(EXPORT_FILES))
def test_a_corrupted_exported_file_is_one_line_naming_its_format(folder, tmp_path, name, capsys):
    broken = tmp_path / EXPORT_FILES[name]
    if name == "saved_model":
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a graph")
    else:
        broken.write_bytes((folder / EXPORT_FILES[name]).read_bytes()[:1000])
    (tmp_path / CLASSES_FILE).write_text(json.dumps({"names": NAMES}))
    kind = {"saved_model": "SavedModel", "onnx": "ONNX"}.get(name, "LiteRT")
    with pytest.raises(ModelLoadError, match=rf"is not a {kind} model this package can load .*export it again"):
        load_model(broken)
    np.save(tmp_path / "images.npy", IMAGES[:1])
    assert predict.main([str(broken), str(tmp_path / "images.npy")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and "Traceback" not in error


def test_a_missing_converter_is_one_line_naming_the_format_and_the_fix(folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # import tf2onnx raises ImportError
    with pytest.raises(exporter.ExportError) as caught:
        exporter.convert(
            "onnx", float32_copy(keras.models.load_model(folder / MODEL_FILE)), tmp_path / "m.onnx", IMAGES
        )
    message = str(caught.value)
    assert message.startswith("export onnx: tf2onnx is not installed") and "remove onnx from export.formats" in message
    assert "\n" not in message


def test_a_converter_that_fails_leaves_no_export_folder(folder, tmp_path, monkeypatch):
    """The stage's outputs appear whole or not at all: a format that fails after others succeeded
    leaves no exports folder and no temporary files."""
    split = tmp_path / "split"
    split.mkdir()
    part = Part(IMAGES, np.arange(len(IMAGES)) % 10, np.arange(len(IMAGES)))
    write_split(split, Split(part, part, part, Classes(NAMES, "label")))
    write_json(tmp_path / "metrics.json", {"test_accuracy": 0.1, "test_top5_accuracy": 0.5, "test_loss": 2.3})

    def unsupported(model, out, calibration):
        out.write_bytes(b"half")
        raise ValueError("'Erfc' op is not supported\nmore detail")

    monkeypatch.setitem(CONVERTERS, "onnx", unsupported)
    settings = ExportParams(formats=("litert_int8", "onnx"), calibration_images=16)
    with pytest.raises(
        exporter.ExportError, match=r"^export onnx: the converter failed on this model \(ValueError: 'Erfc'"
    ):
        exporter.export_formats(
            "cifar10", split, folder, tmp_path / "metrics.json", tmp_path / "exports", tmp_path / "table.json", settings
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "split"]

import keras
import numpy as np
import pytest

from cifar_pipeline.model import build_classifier, exportable
from cifar_pipeline.normalize import ChannelStats
from cifar_pipeline.params import ModelParams

SEED_MODEL = ModelParams(
    filters=(32, 64, 128, 256), dropouts=(0.25, 0.35, 0.45, 0.35), dense_units=1024, activation="relu"
)
TINY = ModelParams(filters=(4, 8), dropouts=(0.1, 0.1), dense_units=16, activation="relu")
STATS = ChannelStats(mean=(120.0, 110.0, 100.0), std=(60.0, 55.0, 50.0))


@pytest.mark.parametrize(("classes", "count"), [(10, 2_235_946), (100, 2_235_946 + 90 * 1025)])
def test_seed_architecture_parameter_count(classes, count):
    assert build_classifier(SEED_MODEL, classes, STATS).count_params() == count


def test_seed_architecture_layers():
    model = build_classifier(SEED_MODEL, 10, STATS)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 32, 64, 64, 128, 128, 256, 256]
    drops = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert drops == [0.25, 0.35, 0.45, 0.35]
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 8
    assert model.output_shape == (None, 10)


def test_the_model_normalises_raw_pixels_with_the_training_split_statistics():
    model = build_classifier(TINY, 10, STATS)
    raw = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    first = keras.Model(model.input, model.get_layer("normalize").output)
    expected = (raw.astype(np.float32) - np.array(STATS.mean, np.float32)) / np.array(STATS.std, np.float32)
    np.testing.assert_allclose(first.predict(raw, verbose=0), expected, rtol=1e-5, atol=1e-5)


def test_exported_model_is_the_trained_graph_without_compile_state(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_classifier(TINY, 10, STATS)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    raw = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    expected = model.predict(raw, verbose=0)
    exported = exportable(model)
    assert not exported.compiled and getattr(exported, "optimizer", None) is None
    assert [layer.name for layer in exported.layers] == [layer.name for layer in model.layers]
    np.testing.assert_allclose(exported.predict(raw, verbose=0), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exported.predict(raw.astype(np.float32), verbose=0), expected, rtol=1e-5, atol=1e-6)
    exported.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(reloaded.predict(raw, verbose=0), expected, rtol=1e-5, atol=1e-6)

import keras
import numpy as np
import pytest

from cifar_pipeline.model import build_classifier, with_normalization
from cifar_pipeline.normalize import ChannelStats
from cifar_pipeline.params import ModelParams

SEED_MODEL = ModelParams(
    filters=(32, 64, 128, 256), dropouts=(0.25, 0.35, 0.45, 0.35), dense_units=1024, activation="relu"
)
TINY = ModelParams(filters=(4, 8), dropouts=(0.1, 0.1), dense_units=16, activation="relu")


@pytest.mark.parametrize(("classes", "count"), [(10, 2_235_946), (100, 2_235_946 + 90 * 1025)])
def test_seed_architecture_parameter_count(classes, count):
    assert build_classifier(SEED_MODEL, classes).count_params() == count


def test_seed_architecture_layers():
    model = build_classifier(SEED_MODEL, 10)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 32, 64, 64, 128, 128, 256, 256]
    drops = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert drops == [0.25, 0.35, 0.45, 0.35]
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 8
    assert model.output_shape == (None, 10)


def test_exported_model_normalises_raw_uint8_like_the_training_data(tmp_path):
    keras.utils.set_random_seed(0)
    classifier = build_classifier(TINY, 10)
    stats = ChannelStats(mean=(120.0, 110.0, 100.0), std=(60.0, 55.0, 50.0))
    model = with_normalization(classifier, stats)
    raw = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    normalised = (raw.astype(np.float32) - np.array(stats.mean, np.float32)) / np.array(stats.std, np.float32)
    expected = classifier.predict(normalised, verbose=0)
    np.testing.assert_allclose(model.predict(raw, verbose=0), expected, rtol=1e-4, atol=1e-6)

    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(reloaded.predict(raw, verbose=0), expected, rtol=1e-4, atol=1e-6)

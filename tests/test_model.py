import dataclasses

import keras
import numpy as np
import pytest

from cifar_pipeline.data.channel_stats import ChannelStats
from cifar_pipeline.training.model import build_classifier, patch_whitening, set_whitening, without_compile_state
from testkit.project import seed_params

SEED_MODEL = seed_params().train.model  # the seed recipe's network: 32-64-128-256 filters, 1024 dense units
TINY = dataclasses.replace(SEED_MODEL, filters=(4, 8), dropouts=(0.1, 0.1), dense_units=16)
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
    exported = without_compile_state(model)
    assert not exported.compiled and getattr(exported, "optimizer", None) is None
    assert [layer.name for layer in exported.layers] == [layer.name for layer in model.layers]
    np.testing.assert_allclose(exported.predict(raw, verbose=0), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exported.predict(raw.astype(np.float32), verbose=0), expected, rtol=1e-5, atol=1e-6)
    exported.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(reloaded.predict(raw, verbose=0), expected, rtol=1e-5, atol=1e-6)


AIRBENCH = dataclasses.replace(SEED_MODEL, kind="airbench", widths=(8, 16, 16), bn_momentum=0.6, bn_scale=False)


def test_seed_network_uses_kerass_batchnorm_defaults():
    """The seed's layers, exactly: momentum 0.99, a learned scale, epsilon 1e-3."""
    for layer in build_classifier(SEED_MODEL, 10, STATS).layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            default = keras.layers.BatchNormalization()
            assert (layer.momentum, layer.scale, layer.epsilon) == (default.momentum, True, default.epsilon)


def test_airbench_network_shape():
    model = build_classifier(dataclasses.replace(AIRBENCH, widths=(64, 256, 256)), 10, STATS)
    whiten = model.get_layer("whiten")
    assert not whiten.trainable and whiten.kernel.shape == (2, 2, 3, 24) and not whiten.use_bias
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D) and layer.trainable]
    assert [c.filters for c in convs] == [64, 64, 256, 256, 256, 256] and not any(c.use_bias for c in convs)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 6 and all(n.momentum == 0.6 and not n.scale for n in norms)
    assert model.get_layer("pool").output.shape == (None, 256)  # 31 -> 15 -> 7 -> 3 px, then the global max
    assert not model.get_layer("head").use_bias and model.get_layer("head_scale").scale == pytest.approx(1 / 9)
    assert model.output_shape == (None, 10)
    assert 1.9e6 < model.count_params() < 2.0e6  # airbench94's ~2 M


def test_whitening_filters_come_from_the_training_images_and_whiten_their_patches():
    rng = np.random.default_rng(0)
    # correlated channels and neighbours, as in real images
    base = rng.normal(128, 40, (64, 33, 33, 1))
    images = np.clip(base[:, :32, :32] + base[:, 1:, 1:] * [0.5, 0.3, 0.1] + rng.normal(0, 8, (64, 32, 32, 3)), 0, 255)
    images = images.astype(np.uint8)
    kernel = patch_whitening(images, STATS)
    np.testing.assert_array_equal(kernel, patch_whitening(images, STATS))  # deterministic
    np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])
    model = build_classifier(AIRBENCH, 10, STATS)
    set_whitening(model, images, STATS)
    np.testing.assert_array_equal(model.get_layer("whiten").get_weights()[0], kernel)
    whitened = keras.Model(model.input, model.get_layer("whiten").output).predict(images, verbose=0)
    flat = whitened.reshape(-1, 24)[:, :12].astype(np.float64)
    covariance = flat.T @ flat / len(flat)
    np.testing.assert_allclose(covariance - np.diag(np.diag(covariance)), 0.0, atol=1e-4)  # decorrelated
    # unit variance, up to the epsilon that caps the smallest eigenvalues' gain: lambda / (lambda + eps)
    assert np.all((np.diag(covariance) > 0.95) & (np.diag(covariance) < 1.0 + 1e-4))


def test_whitening_leaves_the_seed_network_alone():
    model = build_classifier(TINY, 10, STATS)
    before = [w.copy() for w in model.get_weights()]
    set_whitening(model, np.zeros((4, 32, 32, 3), np.uint8), STATS)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_airbench_model_exports_saves_and_loads_with_plain_keras(tmp_path):
    model = build_classifier(AIRBENCH, 100, STATS)
    raw = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    set_whitening(model, raw, STATS)
    exported = without_compile_state(model)
    exported.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    expected = model.predict(raw, verbose=0)
    assert expected.shape == (5, 100)
    np.testing.assert_allclose(reloaded.predict(raw, verbose=0), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, rtol=1e-5)

"""Test-time views: exact pixel permutations inside the exported graph, averaged."""

import keras
import numpy as np
import pytest

from cifar_pipeline.training.views import VIEWS, with_test_views


def probe() -> keras.Model:
    """A 'classifier' whose output is its input image flattened: shows exactly what each view fed it."""
    inputs = keras.Input((32, 32, 3))
    return keras.Model(inputs, keras.layers.Flatten()(inputs))


def reference_views(images: np.ndarray) -> list[np.ndarray]:
    """airbench's test-time views in numpy: mirror, and 1 px shifts of a reflect-padded image."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    down, up = padded[:, :32, :32], padded[:, 2:, 2:]
    return [images, images[:, :, ::-1], down, down[:, :, ::-1], up, up[:, :, ::-1]]


IMAGES = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)


# airbench's weights: the unshifted pair 1/2 of the prediction, the four shifted views 1/8 each.
WEIGHTS = {"flip": [0.5, 0.5], "flip_translate": [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]}


def weighted(outputs: list[np.ndarray], views: str) -> np.ndarray:
    return np.sum([w * o.astype(np.float64) for w, o in zip(WEIGHTS[views], outputs, strict=True)], axis=0)


@pytest.mark.parametrize(("views", "count"), [("flip", 2), ("flip_translate", 6)])
def test_views_average_exactly_the_mirrored_and_shifted_images(views, count):
    assert len(VIEWS[views]) == count
    expected = weighted([v.reshape(3, -1) for v in reference_views(IMAGES)[:count]], views)
    got = with_test_views(probe(), views).predict(IMAGES, verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_no_views_is_the_model_itself():
    model = probe()
    assert with_test_views(model, "none") is model


def test_a_model_with_views_saves_and_loads_without_this_package(tmp_path):
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3)(x)
    classifier = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(x)))
    model = with_test_views(classifier, "flip_translate")
    model.save(tmp_path / "m.keras")
    expected = weighted([classifier.predict(v, verbose=0) for v in reference_views(IMAGES)], "flip_translate")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(reloaded.predict(IMAGES, verbose=0), expected, rtol=1e-5, atol=1e-7)
    # only the classifier's weights train; the view matrices are frozen
    assert len(reloaded.trainable_weights) == len(classifier.trainable_weights)

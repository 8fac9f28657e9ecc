"""The training-time kernels compute what Keras's layers compute, and save as Keras's layers."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar_pipeline.training import fast_layers
from cifar_pipeline.training.fast_layers import FastGELU, FusedBatchNormalization, standard_config


@pytest.fixture(params=["float32", "mixed_bfloat16"])
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


def close(policy: str) -> dict:
    return {"rtol": 1e-5, "atol": 1e-5} if policy == "float32" else {"rtol": 2e-2, "atol": 2e-2}


def as_float(x) -> np.ndarray:
    return np.asarray(tf.cast(x, tf.float32))


@pytest.mark.parametrize("scale", [False, True])
def test_fused_batchnorm_trains_like_kerass_outputs_statistics_and_gradients(policy, scale):
    x = tf.random.stateless_normal((32, 5, 5, 8), seed=(1, 2)) * 3 + 1
    keras_norm = keras.layers.BatchNormalization(momentum=0.6, scale=scale)
    fused = FusedBatchNormalization(momentum=0.6, scale=scale)
    keras_norm.build(x.shape)
    fused.build(x.shape)
    keras_norm.beta.assign(tf.random.stateless_normal((8,), seed=(3, 4)))
    fused.set_weights(keras_norm.get_weights())
    weights = tf.range(8, dtype=tf.float32)  # a loss that weighs channels differently
    results = []
    for layer in (keras_norm, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2 * weights)
        results.append((y, *tape.gradient(loss, [x, layer.beta])))
    for expected, got in zip(*results, strict=True):
        np.testing.assert_allclose(as_float(got), as_float(expected), **close(policy))
    # running statistics: Keras's biased batch variance, not the fused kernel's unbiased one
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(as_float(getattr(fused, name)), as_float(getattr(keras_norm, name)), rtol=1e-5)
    np.testing.assert_allclose(as_float(fused(x)), as_float(keras_norm(x)), **close(policy))  # inference


def test_fast_gelu_is_kerass_exact_gelu_forward_and_backward(policy):
    x = tf.cast(tf.linspace(-6.0, 6.0, 1001), keras.mixed_precision.global_policy().compute_dtype)
    results = []
    for layer in (keras.layers.Activation("gelu"), FastGELU()):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.cos(tf.cast(x, tf.float32)))
        results.append((y, tape.gradient(loss, x)))
    for expected, got in zip(*results, strict=True):
        np.testing.assert_allclose(as_float(got), as_float(expected), **close(policy))


def test_a_model_of_fast_layers_saves_as_kerass_layers_with_the_same_predictions(tmp_path):
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = FusedBatchNormalization(momentum=0.6, scale=False, name="bn")(x)
    outputs = FastGELU(name="gelu")(x)
    model = keras.Model(inputs, outputs)
    model(np.ones((2, 6, 6, 3), np.float32), training=True)  # moves the running statistics
    plain = keras.Model.from_config(standard_config(model.get_config()))
    plain.set_weights(model.get_weights())
    assert [type(layer).__name__ for layer in plain.layers] == [
        "InputLayer",
        "Conv2D",
        "BatchNormalization",
        "Activation",
    ]
    assert plain.get_layer("bn").get_config() == model.get_layer("bn").get_config()
    plain.save(tmp_path / "model.keras")
    images = np.random.default_rng(0).normal(size=(4, 6, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(
        keras.models.load_model(tmp_path / "model.keras").predict(images, verbose=0),
        model.predict(images, verbose=0),
        atol=1e-6,  # float32 rounding: XLA's erf against TensorFlow's
    )


def test_fast_gelu_refuses_another_activation():
    with pytest.raises(ValueError, match="FastGELU computes gelu only, not 'relu'"):
        FastGELU("relu")


@pytest.mark.parametrize("size", [7, 3])
def test_fast_conv_on_small_maps_has_kerass_gradients(monkeypatch, size):
    """The kernel's gradient as three matmuls (the path AMX CPUs take) equals Keras's Conv2D's."""
    monkeypatch.setattr(fast_layers, "matmul_weight_gradient_pays", lambda: True)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        x = tf.cast(tf.random.stateless_normal((16, size, size, 8), seed=(5, 6)), tf.bfloat16)
        plain = keras.layers.Conv2D(12, 3, padding="same", use_bias=False)
        fast = fast_layers.FastConv2D(12, 3, padding="same", use_bias=False)
        plain.build(x.shape)
        fast.build(x.shape)
        fast.set_weights(plain.get_weights())
        assert fast._rows(x)
        results = []
        for layer in (plain, fast):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.range(12, dtype=tf.float32))
            results.append((y, *tape.gradient(loss, [x, layer.kernel])))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for expected, got in zip(*results, strict=True):
        np.testing.assert_allclose(
            as_float(got), as_float(expected), rtol=2e-2, atol=2e-2 * float(np.abs(as_float(expected)).max())
        )

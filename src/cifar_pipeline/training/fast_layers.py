"""Training-time kernels for BatchNormalization and GELU that compute what Keras's layers compute.

Keras 3's TensorFlow backend runs both as chains of separate elementwise ops, each a pass over
the activations, and on a CPU those passes cost more than the convolutions they sit between
(docs/speed.md, "Where the train step's time goes"). Here:

- `FusedBatchNormalization` trains through TensorFlow's `FusedBatchNormV3` (oneDNN's fused
  kernel on CPUs, cuDNN's on GPUs): one pass for the statistics and the normalisation, one for
  the gradient, on bfloat16/float16 activations with float32 statistics. Keras upcasts the
  activations to float32 and back around a dozen separate ops. Running statistics are updated
  as Keras updates them (the biased batch variance; the fused kernel reports the unbiased one).
  Inference, and anything the fused kernel does not cover, is Keras's own `call`.
- `FastGELU` is the exact (erf) GELU with its derivative written out, each direction one
  XLA-compiled function: a single fused loop over the activations in float32, where autodiff
  of Keras's `gelu` leaves a dozen bfloat16 ops and the intermediates they keep.

Both serialise as their Keras counterparts' configs under their own class names, and
`standard_config` renames them back: the saved, logged, exported and served model holds only
Keras's `BatchNormalization` and `Activation("gelu")` and loads without this package.
Checkpoints, which this package alone reads, keep the fast classes.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf
from keras import layers
from tensorflow.python.framework.config import is_op_determinism_enabled  # no public getter in TF 2.21

PACKAGE = "cifar_pipeline"
_SQRT_HALF = 1 / math.sqrt(2.0)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


@tf.function(jit_compile=True)
def _gelu_forward(x: tf.Tensor) -> tf.Tensor:
    x32 = tf.cast(x, tf.float32)
    return tf.cast(0.5 * x32 * (1.0 + tf.math.erf(x32 * _SQRT_HALF)), x.dtype)


@tf.function(jit_compile=True)
def _gelu_backward(x: tf.Tensor, upstream: tf.Tensor) -> tf.Tensor:
    # d/dx x*Phi(x) = Phi(x) + x*phi(x)
    x32 = tf.cast(x, tf.float32)
    cdf = 0.5 * (1.0 + tf.math.erf(x32 * _SQRT_HALF))
    pdf = _INV_SQRT_2PI * tf.exp(-0.5 * x32 * x32)
    return tf.cast(tf.cast(upstream, tf.float32) * (cdf + x32 * pdf), upstream.dtype)


@tf.custom_gradient
def gelu(x: tf.Tensor):
    """Exact GELU, x * Phi(x), with one fused kernel forward and one backward."""
    return _gelu_forward(x), lambda upstream: _gelu_backward(x, upstream)


@keras.saving.register_keras_serializable(package=PACKAGE)
class FastGELU(layers.Activation):
    """`Activation("gelu")` computed by `gelu`; its config is that layer's."""

    def __init__(self, activation: Any = "gelu", **kwargs) -> None:
        if activation != "gelu":
            raise ValueError(f"FastGELU computes gelu only, not {activation!r}")
        super().__init__("gelu", **kwargs)

    def call(self, inputs):
        return gelu(inputs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras's BatchNormalization whose training step is TensorFlow's fused kernel."""

    def _fused(self, inputs, training, mask) -> bool:
        return bool(
            training
            and self.trainable
            and mask is None
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and not self.renorm
            and not self.synchronized
            # GPUs have no deterministic fused BatchNormalization gradient; Keras's ops are
            and not is_op_determinism_enabled()
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fused(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones((channels,), tf.float32)
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros((channels,), tf.float32)
        empty = tf.zeros((0,), tf.float32)
        outputs, mean, unbiased_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=tf.cast(inputs, self.compute_dtype),
            scale=scale,
            offset=offset,
            mean=empty,
            variance=empty,
            epsilon=self.epsilon,
            exponential_avg_factor=1.0,
            data_format="NHWC",
            is_training=True,
        )
        count = tf.cast(tf.size(inputs) // channels, tf.float32)
        variance = unbiased_variance * (count - 1.0) / tf.maximum(count, 1.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + tf.stop_gradient(mean) * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + tf.stop_gradient(variance) * (1.0 - self.momentum)
        )
        return outputs


# Each fast class and the Keras layer whose config it shares, as Keras serialises that layer.
STANDARD = {
    "FusedBatchNormalization": ("BatchNormalization", "keras.layers"),
    "FastGELU": ("Activation", "keras.layers"),
}


def standard_config(config: Any) -> Any:
    """A model config with every fast layer renamed to its Keras layer (the same arguments and
    weights), so `keras.Model.from_config` builds a model that loads without this package."""
    if isinstance(config, list):
        return [standard_config(item) for item in config]
    if not isinstance(config, dict):
        return config
    renamed = {key: standard_config(value) for key, value in config.items()}
    if renamed.get("class_name") in STANDARD and renamed.get("registered_name", "").startswith(f"{PACKAGE}>"):
        renamed["class_name"], renamed["module"] = STANDARD[renamed["class_name"]]
        renamed["registered_name"] = None
    return renamed

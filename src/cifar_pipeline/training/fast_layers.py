"""Training-time kernels for BatchNormalization, GELU and small convolutions that compute what
Keras's layers compute.

Keras 3's TensorFlow backend runs the first two as chains of separate elementwise ops, each a pass over
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
- `FastConv2D` computes a 3x3 kernel's gradient on small feature maps as three matmuls
  (`rows_weight_gradient`) where oneDNN's weight-gradient convolution is slow: bfloat16 on AMX.

Each serialises as its Keras counterpart's config under its own class name, and
`standard_config` renames them back: the saved, logged, exported and served model holds only
Keras's `Conv2D`, `BatchNormalization` and `Activation("gelu")` and loads without this package.
Checkpoints, which this package alone reads, keep the fast classes.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import keras
import tensorflow as tf
from keras import layers
from tensorflow.python.framework.config import is_op_determinism_enabled  # no public getter in TF 2.21

from cifar_pipeline.training.hardware import cpu_flags, has_gpu

PACKAGE = "cifar_pipeline"
SMALL_MAP = 7 * 7  # positions: the fast network's last two groups' maps (7x7 and 3x3)


@functools.cache
def matmul_weight_gradient_pays() -> bool:
    """Measured in bfloat16 on CPUs with AMX (docs/speed.md); GPUs keep cuDNN's kernel."""
    return "amx_bf16" in cpu_flags() and not has_gpu()


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


def rows_weight_gradient(x: tf.Tensor, upstream: tf.Tensor) -> tf.Tensor:
    """The gradient of a stride-1, "same" 3x3 convolution's kernel as three matmuls, one per kernel row.

    Rows first (H, N, W, C), so each kernel row's input is a slice along the first axis, which
    TensorFlow takes without a copy; the three column shifts are one concatenation. Each matmul
    sums over every image and position at once: a long reduction that AMX's matmul runs at
    several times the speed of oneDNN's weight-gradient convolution on small feature maps.
    """
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    rows = tf.pad(tf.transpose(x, [1, 0, 2, 3]), [[1, 1], [0, 0], [1, 1], [0, 0]])
    columns = tf.concat([rows[:, :, shift : shift + width, :] for shift in range(3)], axis=-1)
    upstream_rows = tf.reshape(tf.transpose(upstream, [1, 0, 2, 3]), [-1, upstream.shape[-1]])
    kernel_rows = [
        tf.matmul(tf.reshape(columns[row : row + height], [-1, 3 * channels]), upstream_rows, transpose_a=True)
        for row in range(3)
    ]
    return tf.reshape(tf.stack(kernel_rows), (3, 3, channels, upstream.shape[-1]))


@tf.custom_gradient
def conv3x3_small_maps(x: tf.Tensor, kernel: tf.Tensor):
    """A stride-1 "same" 3x3 convolution; its kernel's gradient from `rows_weight_gradient`."""

    def gradient(upstream):
        to_input = tf.raw_ops.Conv2DBackpropInput(
            input_sizes=tf.shape(x), filter=kernel, out_backprop=upstream, strides=[1, 1, 1, 1], padding="SAME"
        )
        with tf.name_scope("rows_weight_gradient"):  # names its ops for profiles (benchmarks/step_profile.py)
            to_kernel = rows_weight_gradient(x, upstream)
        return to_input, tf.cast(to_kernel, kernel.dtype)

    return tf.nn.conv2d(x, kernel, 1, "SAME"), gradient


@keras.saving.register_keras_serializable(package=PACKAGE)
class FastConv2D(layers.Conv2D):
    """Keras's Conv2D whose kernel gradient, on bfloat16 feature maps of at most `SMALL_MAP`
    positions, is `rows_weight_gradient`, where it was measured to pay (`matmul_weight_gradient_pays`)."""

    def _rows(self, inputs) -> bool:
        height, width = inputs.shape[1], inputs.shape[2]
        return bool(
            inputs.dtype == tf.bfloat16
            and height is not None
            and width is not None
            and height * width <= SMALL_MAP
            and tuple(self.kernel_size) == (3, 3)
            and tuple(self.strides) == (1, 1)
            and tuple(self.dilation_rate) == (1, 1)
            and self.padding == "same"
            and self.data_format == "channels_last"
            and self.groups == 1
            and matmul_weight_gradient_pays()
        )

    def convolution_op(self, inputs, kernel):
        if not self._rows(inputs):
            return super().convolution_op(inputs, kernel)
        # read the variable here: a custom gradient sees a tensor, and the read passes its gradient on
        return conv3x3_small_maps(inputs, tf.cast(tf.convert_to_tensor(kernel), inputs.dtype))


# Each fast class and the Keras layer whose config it shares, as Keras serialises that layer.
STANDARD = {
    "FastConv2D": ("Conv2D", "keras.layers"),
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

"""The networks behind a `Normalization` layer: one graph, trained and served.

The first layer holds the training split's channel statistics (the normalize stage's
output), so every model takes raw 0-255 pixels, uint8 or float: the training data, the
evaluate stage's test images and a user's images all go through the same graph, and no
normalised copy of the data is ever stored. `train.model.kind` picks what follows it:
`seed`, the seed script's VGG-style net, or `airbench`, a network in the shape of
KellerJordan/cifar10-airbench (docs/networks.md says what was taken and what was left).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from cifar_pipeline.core.datasets import IMAGE_SHAPE
from cifar_pipeline.core.model_size import WHITENING_FILTERS
from cifar_pipeline.core.params import ModelParams
from cifar_pipeline.data.channel_stats import ChannelStats
from cifar_pipeline.training.fast_layers import FastConv2D, FastGELU, FusedBatchNormalization, standard_config

WHITENING_LAYER = "whiten"
HEAD_LAYER = "head"
OUTPUT_LAYER = "probabilities"
WHITENING_EPSILON = 5e-4  # keeps the near-zero eigenvalues of smooth patches from blowing up
HEAD_SCALE = 1 / 9  # airbench's: small initial logits, the head trains as if its rate were lower
CHUNK = 512


def batch_norm(params: ModelParams, name: str) -> layers.BatchNormalization:
    """BatchNormalization with the params' momentum and scale (Keras's defaults: 0.99, learned),
    trained by the fused kernel; saved as Keras's own layer (`without_compile_state`)."""
    return FusedBatchNormalization(momentum=params.bn_momentum, scale=params.bn_scale, name=name)


def conv_block(x, params: ModelParams, filters: int, dropout: float, index: int):
    """conv-BN-conv-BN-maxpool-dropout, the seed's repeating unit."""
    for conv in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", activation=params.activation, name=f"block{index}_conv{conv}")(x)
        x = batch_norm(params, f"block{index}_bn{conv}")(x)
    x = layers.MaxPooling2D(name=f"block{index}_pool")(x)
    return layers.Dropout(dropout, name=f"block{index}_dropout")(x)


def conv_group(x, params: ModelParams, width: int, index: int):
    """airbench's unit: conv-maxpool-BN-GELU-conv-BN-GELU; pooling before the first BN halves its cost."""
    x = FastConv2D(width, 3, padding="same", use_bias=False, name=f"group{index}_conv1")(x)
    x = layers.MaxPooling2D(name=f"group{index}_pool")(x)
    x = batch_norm(params, f"group{index}_bn1")(x)
    x = FastGELU(name=f"group{index}_gelu1")(x)
    x = FastConv2D(width, 3, padding="same", use_bias=False, name=f"group{index}_conv2")(x)
    x = batch_norm(params, f"group{index}_bn2")(x)
    return FastGELU(name=f"group{index}_gelu2")(x)


def seed_body(x, params: ModelParams):
    for index, (filters, dropout) in enumerate(zip(params.filters, params.dropouts, strict=True), start=1):
        x = conv_block(x, params, filters, dropout, index)
    x = layers.Flatten(name="flatten")(x)
    return layers.Dense(params.dense_units, activation=params.activation, name="dense")(x)


def airbench_body(x, params: ModelParams):
    """Frozen 2x2 patch whitening (its filters come from `patch_whitening`), three conv groups,
    global max-pool. Returns the pooled features; the head is a bias-free, scaled linear layer.

    With `whiten_bias_epochs`, the whitening layer has a bias and is trainable: the optimizer
    (`variable_rules`) keeps its kernel frozen and trains the bias for those epochs only."""
    trains_bias = params.whiten_bias_epochs > 0
    x = layers.Conv2D(WHITENING_FILTERS, 2, use_bias=trains_bias, trainable=trains_bias, name=WHITENING_LAYER)(x)
    x = FastGELU(name="whiten_gelu")(x)
    for index, width in enumerate(params.widths, start=1):
        x = conv_group(x, params, width, index)
    return layers.GlobalMaxPooling2D(name="pool")(x)


def build_classifier(params: ModelParams, num_classes: int, stats: ChannelStats) -> keras.Model:
    """Raw pixels in, class probabilities out (2,235,946 trainable weights for the seed on CIFAR-10).

    Normalisation runs in float32 whatever the precision policy: bfloat16 has 8 bits of
    mantissa, too few for pixel values before they are centred. An airbench model's
    whitening filters start at zero: `set_whitening` gives them their values.
    """
    inputs = keras.Input(IMAGE_SHAPE, name="image")
    x = layers.Normalization(
        axis=-1, mean=list(stats.mean), variance=list(np.square(stats.std)), name="normalize", dtype="float32"
    )(inputs)
    if params.kind == "airbench":
        x = airbench_body(x, params)
        x = layers.Dense(num_classes, use_bias=False, name=HEAD_LAYER)(x)
        x = layers.Rescaling(HEAD_SCALE, name="head_scale")(x)
        outputs = layers.Activation("softmax", name=OUTPUT_LAYER, dtype="float32")(x)
    else:
        x = seed_body(x, params)
        outputs = layers.Dense(num_classes, activation="softmax", name=OUTPUT_LAYER, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="cifar_model")


def patch_whitening(images: np.ndarray, stats: ChannelStats) -> np.ndarray:
    """The whitening layer's kernel: the eigenvectors of the 2x2 patches' covariance, each
    scaled by 1/sqrt(its eigenvalue), with their negatives (GELU follows, so both signs pass).

    Patches are taken from the normalised training images the model sees, accumulated in
    float64 over fixed chunks: the same images give the same filters, bit for bit.
    """
    mean = np.asarray(stats.mean, np.float64)
    std = np.asarray(stats.std, np.float64)
    second_moment = np.zeros((12, 12))
    count = 0
    for start in range(0, len(images), CHUNK):
        x = (np.asarray(images[start : start + CHUNK], np.float64) - mean) / std
        # patch[kh, kw, c] = x[i + kh, j + kw, c]: Conv2D's kernel layout
        patches = np.stack([x[:, kh : kh + 31, kw : kw + 31] for kh in (0, 1) for kw in (0, 1)], axis=-2)
        flat = patches.reshape(-1, 12)
        second_moment += flat.T @ flat
        count += len(flat)
    eigenvalues, eigenvectors = np.linalg.eigh(second_moment / max(count, 1))
    order = np.argsort(eigenvalues)[::-1]
    filters = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + WHITENING_EPSILON)
    return np.concatenate([filters, -filters], axis=1).reshape(2, 2, 3, WHITENING_FILTERS).astype(np.float32)


def set_whitening(model: keras.Model, images: np.ndarray, stats: ChannelStats) -> None:
    """Compute an airbench model's whitening filters from the training images (a bias, if
    any, starts at 0); no-op for `seed`."""
    try:
        layer = model.get_layer(WHITENING_LAYER)
    except ValueError:
        return
    layer.set_weights([patch_whitening(images, stats), *(np.zeros(b.shape, np.float32) for b in layer.weights[1:])])


def dirac_initialise(model: keras.Model) -> None:
    """airbench's identity ("dirac") start: in each conv group's convolutions, the first
    min(in, out) filters pass their own input channel through unchanged (a 1 at the kernel's
    centre), so the deep network starts close to a shallow one; the rest keep Keras's
    initialisation."""
    for layer in model.layers:
        if layer.name.startswith("group") and isinstance(layer, layers.Conv2D):
            kernel = keras.ops.convert_to_numpy(layer.kernel).copy()
            kh, kw, channels_in, channels_out = kernel.shape
            shared = min(channels_in, channels_out)
            kernel[..., :shared] = 0.0
            kernel[kh // 2, kw // 2, np.arange(shared), np.arange(shared)] = 1.0
            layer.kernel.assign(kernel)


def without_compile_state(classifier: keras.Model) -> keras.Model:
    """The trained model without its training compile state (optimizer, the project's loss class),
    with Keras's own layers in place of the training-time kernels (`fast_layers.standard_config`).

    Same layers and weights, so the same predictions; it loads with plain Keras or
    `mlflow.pyfunc` without this package installed.
    """
    # from_config, not clone_model: clone_model would keep the compile state
    model = keras.Model.from_config(standard_config(classifier.get_config()))
    model.set_weights(classifier.get_weights())
    return model

"""Keras's SGD and Muon with airbench's per-variable rules, through the optimizer's own hook.

airbench gives BatchNormalization biases 64x the rate of the other weights and trains the
whitening layer's bias for a few epochs, then freezes it. Keras optimizers have one rate; a
custom training loop would fork the one `fit` the train stage, the benchmarks and
tf.distribute share. Both rules are instead a multiple of each variable's gradient inside
`Optimizer.apply`, which every Keras training path calls (`fit`, a LossScaleOptimizer's
inner optimizer, a distribution strategy's replicas): for SGD with momentum, scaling a
gradient by k is exactly scaling that variable's rate by k, and weight decay (decoupled, from
the rate alone) is left as it is, as airbench leaves it. A frozen variable's multiple is 0
from its step on: its momentum then runs out over a few steps (a share 0.85^n of one step's
size after n steps with sgd's 0.85); airbench drops it from the update at once.

The rules name variables by their path in the model (`group1_bn1/beta`), are saved with the
optimizer in each checkpoint, and so hold across a resumed run. Exported models have no
optimizer: they load without this module.
"""

from __future__ import annotations

import re

import keras
from keras import ops


class VariableRates:
    """Mixin for a Keras optimizer: `rate_scales` {path regex: multiple of the rate};
    `frozen_from` {path regex: the first step at which the variable stops changing}.
    Frozen variables are also left out of weight decay (airbench decays no frozen weight)."""

    def __init__(
        self,
        *args,
        rate_scales: dict[str, float] | None = None,
        frozen_from: dict[str, int] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.rate_scales = dict(rate_scales or {})
        self.frozen_from = dict(frozen_from or {})

    def _scale(self, gradient, variable):
        path = variable.path
        for pattern, first_frozen_step in self.frozen_from.items():
            if re.search(pattern, path):
                still_training = ops.cast(ops.less(self.iterations, first_frozen_step), gradient.dtype)
                return gradient * still_training
        for pattern, scale in self.rate_scales.items():
            if re.search(pattern, path):
                return gradient * ops.cast(scale, gradient.dtype)
        return gradient

    def apply(self, grads, trainable_variables=None):
        variables = self._trainable_variables if trainable_variables is None else trainable_variables
        grads = [None if g is None else self._scale(g, v) for g, v in zip(grads, variables, strict=True)]
        return super().apply(grads, trainable_variables)

    def build(self, var_list) -> None:
        if not self.built:  # Keras's own hook, which must run before the optimizer is built
            self.exclude_from_weight_decay(
                var_list=[v for v in var_list if any(re.search(p, v.path) for p in self.frozen_from)]
            )
        super().build(var_list)

    def get_config(self) -> dict:
        return {**super().get_config(), "rate_scales": self.rate_scales, "frozen_from": self.frozen_from}


@keras.saving.register_keras_serializable(package="cifar_pipeline")
class VariableRateSGD(VariableRates, keras.optimizers.SGD):
    """Keras's SGD with `VariableRates`."""


@keras.saving.register_keras_serializable(package="cifar_pipeline")
class ConvMuon(VariableRates, keras.optimizers.Muon):
    """Keras's Muon, extended to convolution kernels.

    Keras 3.15's Muon orthogonalises 2-D variables only; every other shape, conv kernels
    included, takes its AdamW path, so on a conv net it is AdamW. Here a conv kernel
    (kh, kw, in, out) is orthogonalised as the (kh*kw*in, out) matrix it multiplies by, as
    airbench94_muon does, then reshaped back; Keras's rate adjustment (Moonlight's
    sqrt(max(rows, cols)) * rms_rate) keeps one rate for both paths. Biases, normalisation
    and the layers named in `exclude_layers` (the head) stay on AdamW.
    """

    def _should_use_adamw(self, variable) -> bool:
        if len(variable.shape) == 4 and not any(re.search(k, variable.path) for k in self.exclude_layers):
            return False
        return super()._should_use_adamw(variable)

    def _muon_update_step(self, gradient, variable, lr, m):
        if len(variable.shape) != 4:
            return super()._muon_update_step(gradient, variable, lr, m)
        self.assign_add(m, ops.add(gradient, m * (self.momentum - 1)))
        direction = ops.add(gradient, self.momentum * m) if self.nesterov else m
        matrix = ops.reshape(direction, (-1, variable.shape[-1]))
        update = self.lr_adjust(lr * self.zeropower_via_newtonschulz5(matrix, self.ns_steps))
        self.assign_sub(variable, ops.reshape(update, variable.shape))

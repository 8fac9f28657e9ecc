"""Keras 3.15.1 + TF 2.21: make `model.fit` train under MultiWorkerMirroredStrategy.

Upstream bug keras-team/keras#20585 (open): in Keras 3's TensorFlow trainer,
1. `_maybe_symbolic_build` all-reduces the *first data batch* (only its shapes are needed)
   with `strategy.reduce("MEAN", ...)`; under MultiWorkerMirroredStrategy that converts a
   `PerReplica` to a tensor and fails ("Attempt to convert a value (PerReplica...)");
2. `reduce_per_replica(..., reduction="auto")` reduces every scalar metric with
   `strategy.reduce("MEAN", v, axis=0)`, and a scalar has no axis 0 ("Invalid reduction
   dimension 0 for input with 0 dimensions").

The fixes: (1) build from this worker's own part of the batch; (2) reduce rank-0 values
with `axis=None`. Both change behaviour only where upstream raises, and only for models of
this pipeline under a multi-worker strategy. Checked on Keras `KERAS_CHECKED`; on any
other version nothing is patched (tests/test_distribution.py tells when upstream is fixed).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as tf_trainer

KERAS_CHECKED = "3.15.1"
_upstream_reduce = tf_trainer.reduce_per_replica


def applies() -> bool:
    return keras.__version__ == KERAS_CHECKED


def _reduce_per_replica(values, strategy, reduction):
    if reduction == "auto" and tf_trainer._collective_all_reduce_multi_worker(strategy):
        return tree.map_structure(
            lambda v: (
                strategy.reduce("MEAN", v, axis=None) if v.shape.rank == 0 else _upstream_reduce(v, strategy, reduction)
            ),
            values,
        )
    return _upstream_reduce(values, strategy, reduction)


def patch(model: keras.Model) -> None:
    """Apply both fixes for `model` (the first to this instance only; the second is idempotent)."""
    if not applies():
        return
    tf_trainer.reduce_per_replica = _reduce_per_replica

    def symbolic_build(iterator=None, data_batch=None) -> None:
        strategy = model.distribute_strategy
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tree.map_structure(
                    lambda v: (
                        strategy.experimental_local_results(v)[0]
                        if isinstance(v, tf.distribute.DistributedValues)
                        else v
                    ),
                    next(batches),
                )
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = symbolic_build

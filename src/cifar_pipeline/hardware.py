"""What `auto` means for the speed params, decided from the devices TensorFlow sees.

Defaults follow measurements (benchmarks/results.md): on this project's 2-core CPU, XLA
ran slower and float32 is the only fast type; with a GPU, float16 compute is the
standard win and Keras enables XLA itself.
"""

from __future__ import annotations

import tensorflow as tf


def has_gpu() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def precision_policy(setting: str | bool) -> str:
    """The Keras dtype policy: float16 on GPUs, bfloat16 if forced on a CPU (no fast float16 there)."""
    gpu = has_gpu()
    if setting == "auto":
        setting = gpu
    if not setting:
        return "float32"
    return "mixed_float16" if gpu else "mixed_bfloat16"

"""What `auto` means for the speed params, decided from the hardware TensorFlow runs on.

Defaults follow measurements (docs/speed.md, "Measurements behind the defaults"): on a
CPU, mixed bfloat16 only where the CPU computes bfloat16 natively (emulated it is far
slower), and no XLA (slower on every CPU measured). With a GPU, float16 compute is the
standard win and Keras enables XLA itself.
"""

from __future__ import annotations

from pathlib import Path

# CPU flags (Linux /proc/cpuinfo names) of native bfloat16 arithmetic that oneDNN uses.
# Intel CPUs with AMX also report avx512_bf16.
FAST_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def has_gpu() -> bool:
    import tensorflow as tf  # here, so that reading CPU flags (benchmarks) does not load TensorFlow

    return bool(tf.config.list_physical_devices("GPU"))


def cpuinfo_value(keys: tuple[str, ...], cpuinfo: Path = CPUINFO) -> str | None:
    """The first CPU's value for any of `keys`; None where /proc/cpuinfo does not exist (macOS, Windows)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags (`Features` on aarch64); empty where they cannot be read."""
    return frozenset((cpuinfo_value(("flags", "Features"), cpuinfo) or "").split())


def cpu_has_fast_bfloat16() -> bool:
    return bool(FAST_BFLOAT16_FLAGS & cpu_flags())


def precision_policy(setting: str | bool) -> str:
    """The Keras dtype policy: float16 on GPUs, bfloat16 on CPUs (no fast float16 there).

    `auto` turns mixed precision on only where it was measured to pay: a GPU, or a CPU
    with native bfloat16 instructions. Elsewhere bfloat16 is emulated and far slower.
    `float16` or `bfloat16` names the compute dtype on any device.
    """
    if setting in ("float16", "bfloat16"):
        return f"mixed_{setting}"
    gpu = has_gpu()
    if setting == "auto":
        setting = gpu or cpu_has_fast_bfloat16()
    if not setting:
        return "float32"
    return "mixed_float16" if gpu else "mixed_bfloat16"

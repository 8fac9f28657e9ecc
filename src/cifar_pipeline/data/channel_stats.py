"""Per-channel standardisation statistics, from the training split only.

The seed script normalised with `range(0, 2)`, touching red and green but never blue;
here all three channels are computed by the same vectorised code and applied by the
model's first layer. Stats use float64 accumulators over chunks, so full CIFAR needs no
float64 copy in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifar_pipeline.core.files import atomic_file, read_json, write_json
from cifar_pipeline.core.layout import load_images

CHUNK = 4096


@dataclass(frozen=True)
class ChannelStats:
    """Mean and standard deviation per RGB channel, in 0-255 pixel units."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_json(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, value: dict[str, list[float]]) -> ChannelStats:
        return cls(mean=tuple(value["mean"]), std=tuple(value["std"]))

    @classmethod
    def read(cls, path: Path) -> ChannelStats:
        return cls.from_json(read_json(path))


def channel_stats(images: np.ndarray) -> ChannelStats:
    """Mean and (population) std of each channel over every pixel of every image."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    for start in range(0, len(images), CHUNK):
        chunk = np.asarray(images[start : start + CHUNK], dtype=np.float64).reshape(-1, 3)
        total += chunk.sum(axis=0)
        total_sq += np.square(chunk).sum(axis=0)
    count = len(images) * images.shape[1] * images.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    # A constant channel (only in synthetic data) would divide by zero.
    std = np.where(std < 1e-6, 1.0, std)
    return ChannelStats(mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))


def normalize_dataset(split_dir: Path, stats_json: Path) -> ChannelStats:
    """Write the training split's channel statistics, the model's `Normalization` layer's weights.

    Only the statistics: the model normalises its own uint8 input (training, evaluation and
    serving run one graph), so no float32 copy of the images is stored, cached by DVC, or
    loaded into memory.
    """
    stats = channel_stats(load_images(split_dir, "train"))
    with atomic_file(stats_json) as tmp:
        write_json(tmp, stats.to_json())
    print(f"channel mean {np.round(stats.mean, 2).tolist()}, std {np.round(stats.std, 2).tolist()}")
    return stats

import numpy as np

from cifar_pipeline.core.files import save_arrays
from cifar_pipeline.data.channel_stats import ChannelStats, channel_stats, normalize_dataset


def _images():
    rng = np.random.default_rng(0)
    images = np.empty((300, 32, 32, 3), dtype=np.uint8)
    for channel, (mean, std) in enumerate([(50, 10), (120, 30), (200, 20)]):
        images[..., channel] = np.clip(rng.normal(mean, std, images.shape[:3]), 0, 255).astype(np.uint8)
    return images


def test_stats_cover_all_three_channels():
    images = _images()
    stats = channel_stats(images)
    expected_mean = images.reshape(-1, 3).mean(axis=0)
    expected_std = images.reshape(-1, 3).std(axis=0)
    np.testing.assert_allclose(stats.mean, expected_mean, rtol=1e-9)
    np.testing.assert_allclose(stats.std, expected_std, rtol=1e-9)
    assert stats.mean[2] > 190  # the seed's range(0, 2) never touched blue


def test_stage_writes_only_the_statistics(tmp_path):
    """No float copy of the images: the model normalises its own input."""
    images = _images()
    (tmp_path / "split").mkdir()
    save_arrays(tmp_path / "split", train_images=images, val_images=images[:10] * 0)
    stats = normalize_dataset(tmp_path / "split", tmp_path / "stats" / "cifar10.json")
    assert [p.name for p in (tmp_path / "stats").iterdir()] == ["cifar10.json"]
    assert ChannelStats.read(tmp_path / "stats" / "cifar10.json") == stats == channel_stats(images)


def test_constant_channel_does_not_divide_by_zero():
    images = np.full((4, 32, 32, 3), 7, dtype=np.uint8)
    assert channel_stats(images).std == (1.0, 1.0, 1.0)


def test_stats_json_round_trip():
    stats = ChannelStats(mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0))
    assert ChannelStats.from_json(stats.to_json()) == stats

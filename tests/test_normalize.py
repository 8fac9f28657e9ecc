import numpy as np

from cifar_pipeline.normalize import ChannelStats, channel_stats, write_normalized


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


def test_normalized_arrays_are_float32_with_zero_mean_unit_std(tmp_path):
    images = _images()
    stats = channel_stats(images)
    write_normalized(images, stats, tmp_path / "x.npy")
    out = np.load(tmp_path / "x.npy")
    assert out.dtype == np.float32 and out.shape == images.shape
    pixels = out.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(pixels.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(pixels.std(axis=0), 1, atol=1e-5)


def test_constant_channel_does_not_divide_by_zero():
    images = np.full((4, 32, 32, 3), 7, dtype=np.uint8)
    assert channel_stats(images).std == (1.0, 1.0, 1.0)


def test_stats_json_round_trip():
    stats = ChannelStats(mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0))
    assert ChannelStats.from_json(stats.to_json()) == stats

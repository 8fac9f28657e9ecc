import numpy as np

from cifar_pipeline.core.params import AugmentParams
from cifar_pipeline.training.input_pipeline import steps_per_epoch, training_dataset

NO_AUGMENT = AugmentParams(flip=False, shift=0, fill="mean")


def test_each_epoch_of_the_endless_training_stream_is_one_fresh_permutation():
    """fit() keeps one iterator for all epochs; `steps_per_epoch` batches must be exactly one pass."""
    count, batch = 10, 4
    images = np.zeros((count, 32, 32, 3), np.uint8)
    data = training_dataset(images, np.arange(count), batch, NO_AUGMENT, seed=0, fill=(0.0, 0.0, 0.0))
    steps = steps_per_epoch(count, batch)
    batches = [labels.numpy().tolist() for _, labels in data.take(3 * steps)]
    assert [len(b) for b in batches] == [4, 4, 2] * 3
    epochs = [[i for b in batches[e * steps : (e + 1) * steps] for i in b] for e in range(3)]
    assert all(sorted(e) == list(range(count)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3  # reshuffled every epoch


def test_batches_are_raw_pixels_as_float32():
    """The model normalises its own input: the pipeline must not scale or centre the pixels."""
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    x, y = next(iter(training_dataset(images, np.arange(8), 8, NO_AUGMENT, seed=0, fill=(1.0, 2.0, 3.0))))
    assert x.dtype.name == "float32"
    order = np.argsort(y.numpy())
    np.testing.assert_array_equal(x.numpy()[order], images.astype(np.float32))


def test_shift_fills_the_uncovered_border_with_the_mean_colour():
    """The seed shifted normalised images with zero fill: the training split's mean colour."""
    images = np.full((64, 32, 32, 3), 200, np.uint8)
    fill = (10.0, 20.0, 30.0)
    shift = AugmentParams(flip=False, shift=4, fill="mean")
    x, _ = next(iter(training_dataset(images, np.arange(64), 64, shift, seed=0, fill=fill)))
    pixels = x.numpy().reshape(-1, 3)
    is_image = (pixels == 200).all(axis=1)
    is_fill = (pixels == np.array(fill, np.float32)).all(axis=1)
    assert (is_image | is_fill).all()  # nearest interpolation: no blended colours
    assert is_fill.any() and is_image.mean() > 0.5


def test_reflect_fill_mirrors_the_image_into_the_uncovered_border():
    """Each column of this image has its own value: a reflected shift shows only image columns."""
    columns = np.arange(32, dtype=np.uint8) * 7
    images = np.broadcast_to(columns[None, None, :, None], (64, 32, 32, 3)).copy()
    reflect = AugmentParams(flip=False, shift=4, fill="reflect")
    x, _ = next(iter(training_dataset(images, np.arange(64), 64, reflect, seed=0, fill=(10.0, 20.0, 30.0))))
    x = x.numpy()
    assert set(np.unique(x)) <= set(columns.astype(np.float32))  # no fill colour, no blended values
    rows_moved = [not np.array_equal(row, images[0, 0].astype(np.float32)) for row in x[:, 0]]
    assert any(rows_moved)  # some images were shifted sideways

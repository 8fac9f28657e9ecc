import numpy as np

from cifar_pipeline.input_pipeline import steps_per_epoch, training_dataset
from cifar_pipeline.params import AugmentParams


def test_each_epoch_of_the_endless_training_stream_is_one_fresh_permutation():
    """fit() keeps one iterator for all epochs; `steps_per_epoch` batches must be exactly one pass."""
    count, batch = 10, 4
    no_augment = AugmentParams(flip=False, shift=0)
    data = training_dataset(np.zeros((count, 32, 32, 3), np.float32), np.arange(count), batch, no_augment, seed=0)
    steps = steps_per_epoch(count, batch)
    batches = [labels.numpy().tolist() for _, labels in data.take(3 * steps)]
    assert [len(b) for b in batches] == [4, 4, 2] * 3
    epochs = [[i for b in batches[e * steps : (e + 1) * steps] for i in b] for e in range(3)]
    assert all(sorted(e) == list(range(count)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3  # reshuffled every epoch

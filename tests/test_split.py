import numpy as np
import pytest

from cifar_pipeline.data.split import allocate, select_test_images, train_val_split


@pytest.fixture
def labels():
    # 10 classes with uneven sizes, shuffled, like a subsample would be
    rng = np.random.default_rng(0)
    values = np.repeat(np.arange(10), [100, 90, 80, 120, 100, 100, 110, 100, 95, 105])
    return rng.permutation(values)


def test_split_is_disjoint_complete_and_stratified(labels):
    train, val = train_val_split(labels, 0.1, seed=42)
    assert len(np.intersect1d(train, val)) == 0
    assert len(train) + len(val) == len(labels)
    assert len(val) == round(len(labels) * 0.1)
    counts = np.bincount(labels)
    val_counts = np.bincount(labels[val], minlength=10)
    assert np.all(np.abs(val_counts - counts * 0.1) <= 1)


def test_same_seed_same_split_other_seed_other_split(labels):
    a_train, a_val = train_val_split(labels, 0.2, seed=3)
    b_train, b_val = train_val_split(labels, 0.2, seed=3)
    np.testing.assert_array_equal(a_val, b_val)
    np.testing.assert_array_equal(a_train, b_train)
    _, c_val = train_val_split(labels, 0.2, seed=4)
    assert not np.array_equal(a_val, c_val)


def test_subsample_is_stratified_then_split(labels):
    train, val = train_val_split(labels, 0.2, seed=1, max_images=500)
    assert len(train) + len(val) == 500 and len(val) == 100
    used = labels[np.concatenate([train, val])]
    expected = np.bincount(labels) * 500 / len(labels)
    assert np.all(np.abs(np.bincount(used, minlength=10) - expected) <= 1)


def test_too_few_images_for_the_fraction_is_an_error(labels):
    with pytest.raises(ValueError, match="empty train or validation set"):
        train_val_split(labels, 0.01, seed=1, max_images=20)


def test_allocate_hands_out_exactly_the_total():
    quota = allocate(np.array([5, 5, 5]), 7)
    assert quota.sum() == 7 and quota.max() - quota.min() <= 1


def test_test_subset_all_or_stratified(labels):
    assert len(select_test_images(labels, None, 0)) == len(labels)
    picked = select_test_images(labels, 100, 0)
    assert len(picked) == 100 and np.all(np.bincount(labels[picked], minlength=10) >= 8)

import numpy as np
import pytest

from cifar_pipeline.inference.evaluation import evaluate_probabilities


def test_metrics_from_known_probabilities():
    probabilities = np.full((4, 10), 0.01)
    probabilities[0, 0] = 0.91  # right
    probabilities[1, 2] = 0.91  # label 1: wrong, but 1 is in the top five (0.01 ties)
    probabilities[2, 3] = 0.5
    probabilities[2, 4] = 0.41  # label 4: second -> top-5 hit
    probabilities[3, 9] = 0.91  # right
    labels = np.array([0, 1, 4, 9])
    result = evaluate_probabilities(probabilities, labels)
    assert result.accuracy == 0.5
    assert result.loss == pytest.approx(np.mean(-np.log([0.91, 0.01, 0.41, 0.91])))
    assert result.confusion[1, 2] == 1 and result.confusion[4, 3] == 1 and result.confusion.sum() == 4
    assert result.per_class_accuracy[0] == 1.0 and result.per_class_accuracy[4] == 0.0
    assert set(result.metrics()) == {"test_loss", "test_accuracy", "test_top5_accuracy"}


def test_top5_counts_labels_outside_the_top_five_as_misses():
    probabilities = np.tile(np.linspace(0.19, 0.01, 10), (1, 1))
    assert evaluate_probabilities(probabilities, np.array([9])).top5_accuracy == 0.0
    assert evaluate_probabilities(probabilities, np.array([4])).top5_accuracy == 1.0


def test_a_class_without_test_images_has_no_accuracy_rather_than_zero():
    """split.max_test_images below the class count leaves classes out: unknown, not all wrong."""
    probabilities = np.full((3, 10), 0.1)
    probabilities[:, 0] = 0.5
    result = evaluate_probabilities(probabilities, np.array([0, 0, 1]))
    assert np.isnan(result.per_class_accuracy[5])
    rows = result.per_class([f"c{i}" for i in range(10)])
    assert rows["c0"] == {"accuracy": 1.0, "test_images": 2}
    assert rows["c1"] == {"accuracy": 0.0, "test_images": 1}
    assert rows["c5"] == {"accuracy": None, "test_images": 0}

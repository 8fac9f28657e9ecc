"""The champion rule on its own: beat the champion on the same test set, or leave it."""

from types import SimpleNamespace

from cifar_pipeline.registry import TEST_SET_TAG, champion_decision, registered_name


def champion(accuracy: float, digest: str, version: str = "3"):
    return SimpleNamespace(version=version, tags={"test_accuracy": str(accuracy), TEST_SET_TAG: digest})


def test_the_first_version_becomes_champion():
    assert champion_decision(0.1, "full", None).champion


def test_better_on_the_same_test_set_takes_champion():
    decision = champion_decision(0.61, "full", champion(0.58, "full"))
    assert decision.champion and decision.reason == "test accuracy 0.6100 > champion v3's 0.5800"


def test_worse_or_equal_does_not():
    assert not champion_decision(0.55, "full", champion(0.58, "full")).champion
    assert not champion_decision(0.58, "full", champion(0.58, "full")).champion


def test_a_better_score_on_another_test_set_does_not_dethrone():
    """A quick try on a 1,000-image subsample never beats a model scored on all 10,000."""
    decision = champion_decision(0.99, "subsample", champion(0.58, "full"))
    assert not decision.champion and "another test set" in decision.reason


def test_one_registered_model_per_dataset_and_label_set():
    assert [registered_name("cifar10", "label"), registered_name("cifar100", "fine")] == ["cifar10", "cifar100"]
    assert registered_name("cifar100", "coarse") == "cifar100-coarse"

"""The champion rule on its own: beat the champion (or, with none, the best other) on the same images."""

import pytest

from cifar_pipeline.registry.champion import Standing, beats, decide


def test_the_only_version_takes_champion():
    decision = decide(Standing("1", 0.1), None, [], 0.005, 1000)
    assert decision.holder == "1" and decision.reason == "no other version to compare with"


def test_it_must_beat_the_champion_by_the_margin():
    champion = Standing("3", 0.580)
    taken = decide(Standing("4", 0.590), champion, [], 0.005, 10000)
    assert taken.holder == "4"
    assert taken.reason == "test accuracy 0.5900 >= champion v3's 0.5800 +0.005 on the same 10000 test images"
    kept = decide(Standing("4", 0.583), champion, [], 0.005, 10000)
    assert kept.holder == "3" and kept.reason.startswith("test accuracy 0.5830 < champion v3's 0.5800 +0.005")


@pytest.mark.parametrize(("candidate", "rival", "wins"), [(0.505, 0.5, True), (0.5049, 0.5, False), (0.5, 0.5, False)])
def test_exactly_the_margin_is_enough_despite_floating_point(candidate, rival, wins):
    """50 more of 10,000 images is +0.005, although 0.5 + 0.005 != 0.505 in floats."""
    assert beats(candidate, rival, 0.005) is wins


def test_without_a_champion_the_best_other_version_is_the_rival_and_keeps_it_if_better():
    others = [Standing("1", 0.40), Standing("2", 0.61), Standing("3", 0.61)]
    kept = decide(Standing("4", 0.612), None, others, 0.005, 517)
    assert kept.holder == "2"  # a tie goes to the older version
    assert kept.reason.startswith("no version held champion; the best other, v2 (0.6100 on the same 517 test")
    assert decide(Standing("4", 0.62), None, others, 0.005, 517).holder == "4"

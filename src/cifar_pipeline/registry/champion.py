"""The champion rule, on its own so it can be read and tested.

Every number compared is a test accuracy on the *candidate's* test images, read from (or
scored into) the MLflow store; docs/registry.md says why each case is decided as it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mlflow
from mlflow.models import MetricThreshold
from mlflow.models.evaluation import EvaluationResult
from mlflow.models.evaluation.validation import ModelValidationFailedException

# Accuracies are counts over the same images; a margin of exactly 50 images must pass although
# 0.5 + 0.005 is not exactly 0.505 in floating point.
SLACK = 1e-9
# MLflow's validation logs two INFO lines per comparison; the stage prints its own decision.
logging.getLogger("mlflow.models.evaluation.validation").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Standing:
    version: str
    accuracy: float  # on the candidate's test images


@dataclass(frozen=True)
class Decision:
    holder: str  # the version that holds `champion` after the decision
    reason: str


def beats(candidate: float, rival: float, min_improvement: float) -> bool:
    """MLflow's own model validation: candidate >= rival + min_improvement.

    `mlflow.models.evaluate` is not used to produce the numbers: it scores tabular data
    through pandas, while these models take uint8 image tensors and the evaluate stage
    already scores them exactly as `cifar-predict` serves them.
    """
    threshold = MetricThreshold(min_absolute_change=max(min_improvement - SLACK, SLACK), greater_is_better=True)
    try:
        mlflow.validate_evaluation_results(
            {"test_accuracy": threshold},
            EvaluationResult({"test_accuracy": candidate}, {}),
            EvaluationResult({"test_accuracy": rival}, {}),
        )
    except ModelValidationFailedException:
        return False
    return True


def decide(
    candidate: Standing, champion: Standing | None, others: list[Standing], min_improvement: float, images: int
) -> Decision:
    """Who holds `champion` once `candidate` is registered.

    - a champion exists: the candidate takes it only by beating it by `min_improvement`;
    - no version holds it but others exist: the candidate faces the best of them the same way,
      and if it loses that best version takes `champion` back;
    - the candidate is the only version: it takes it.
    """
    on = f"on the same {images} test images"
    margin = f"+{min_improvement:g}"
    if champion is None and not others:
        return Decision(candidate.version, "no other version to compare with")
    rival = champion or max(others, key=lambda s: (s.accuracy, -int(s.version)))  # a tie: the older version
    won = beats(candidate.accuracy, rival.accuracy, min_improvement)
    mine, theirs = f"{candidate.accuracy:.4f}", f"{rival.accuracy:.4f}"
    if champion is not None:
        reason = f"test accuracy {mine} {'>=' if won else '<'} champion v{rival.version}'s {theirs} {margin} {on}"
    elif won:
        reason = (
            f"no version held champion; test accuracy {mine} >= the best other, "
            f"v{rival.version}'s {theirs} {margin} {on}"
        )
    else:
        reason = (
            f"no version held champion; the best other, v{rival.version} ({theirs} {on}), takes it: "
            f"test accuracy {mine} < {theirs} {margin}"
        )
    return Decision(candidate.version if won else rival.version, reason)

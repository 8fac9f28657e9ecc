"""What the store holds about a logged model: its id from a URI, its metrics on given images."""

from __future__ import annotations

from mlflow.tracking import MlflowClient


def model_id_of(model_uri: str | None) -> str | None:
    """`m-<id>` of a logged model's `models:/m-<id>` URI (what the train stage records), else None."""
    if model_uri and model_uri.startswith("models:/m-"):
        return model_uri.removeprefix("models:/")
    return None


def model_scores(model_id: str, digest: str) -> dict[str, float]:
    """The metrics MLflow holds for a logged model on the images with this digest (newest per key)."""
    newest: dict[str, tuple[int, float]] = {}
    for metric in MlflowClient().get_logged_model(model_id).metrics or []:
        if metric.dataset_digest == digest and metric.timestamp >= newest.get(metric.key, (-1, 0.0))[0]:
            newest[metric.key] = (metric.timestamp, metric.value)
    return {key: value for key, (_, value) in newest.items()}

"""The register stage: every evaluated model becomes a version in MLflow's Model Registry.

One registered model per dataset and label set (`cifar10`, `cifar100`, `cifar100-coarse`).
Two aliases move by a rule anyone can read:
- `newest`: the newest evaluated version, always (MLflow reserves the alias name `latest`);
- `champion`: a new version takes it only if its test accuracy beats the current champion's
  **on the same test set** (same `test_set_digest`: archive MD5, label set and the exact test
  indices); a model scored on a 1,000-image subsample never dethrones one scored on the full
  10,000. With no champion yet, the first version takes it. A person may move it by hand; the
  pipeline then moves it again only by the same rule.
The decision is printed and recorded on the version as tags.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cifar_pipeline import tracking
from cifar_pipeline.errors import PipelineError, first_line
from cifar_pipeline.layout import RUN_FILE
from cifar_pipeline.outputs import atomic_file, load_array, read_json, write_json

NEWEST = "newest"  # MLflow reserves "latest" (models:/<name>/latest already means the newest version)
CHAMPION = "champion"
TEST_SET_TAG = "test_set_digest"
SHAPING_PARAMS = ("dataset", "data.url", "data.md5", "data.label_mode")  # plus every split.* and train.*


class RegistryError(PipelineError):
    """The registry cannot be reached, or refused a registration."""


def registered_name(dataset: str, label_mode: str) -> str:
    """`cifar10`, `cifar100`, `cifar100-coarse`: one registered model per dataset and label set."""
    return f"{dataset}-{label_mode}" if label_mode == "coarse" else dataset


@dataclass(frozen=True)
class Decision:
    champion: bool
    reason: str


def champion_decision(accuracy: float, digest: str, current: ModelVersion | None) -> Decision:
    """The rule, on its own so it can be read and tested: beat the champion on the same test set."""
    if current is None:
        return Decision(True, "no champion yet")
    theirs = current.tags.get(TEST_SET_TAG)
    their_accuracy = float(current.tags.get("test_accuracy", "nan"))
    if theirs != digest:
        return Decision(False, f"champion v{current.version} was scored on another test set ({theirs}, not {digest})")
    if accuracy > their_accuracy:
        return Decision(True, f"test accuracy {accuracy:.4f} > champion v{current.version}'s {their_accuracy:.4f}")
    return Decision(False, f"test accuracy {accuracy:.4f} <= champion v{current.version}'s {their_accuracy:.4f}")


def _alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


@tracking.server_errors()
def register_model(dataset: str, split_dir: Path, model_dir: Path, metrics_json: Path, out_json: Path) -> None:
    """Register the evaluated model (once per run), tag it, move `newest` and maybe `champion`."""
    trained = read_json(model_dir / RUN_FILE)
    run_id = trained["run_id"]
    metrics = read_json(metrics_json)
    test_indices = load_array(split_dir, "test_indices")
    uri = tracking.use_store()
    client = MlflowClient()
    run = tracking.training_run_of(run_id, dataset)
    params = run.data.params
    label_mode = params["data.label_mode"]
    name = registered_name(dataset, label_mode)
    digest = tracking.images_digest(params["data.md5"], label_mode, test_indices)
    tags = {
        **{key: str(value) for key, value in metrics.items()},
        TEST_SET_TAG: digest,
        "test_images": str(len(test_indices)),
        "dvc_experiment": run.data.tags.get("dvc_experiment", ""),
        "git_commit": run.data.tags.get("git_commit", ""),
        **{
            f"param.{key}": value
            for key, value in params.items()
            if key in SHAPING_PARAMS or key.startswith(("split.", "train."))
        },
    }
    model_uri = trained.get("model_uri") or f"runs:/{run_id}/model"
    version = None
    created = False
    try:
        version = _version_of_run(client, name, run_id)
        if version is None:
            version, created = _new_version(client, name, run_id, model_uri, tags), True
        current = _alias(client, name, CHAMPION)
        if current is not None and str(current.version) == str(version.version):
            decision = Decision(True, "already the champion")
        else:
            decision = champion_decision(float(metrics["test_accuracy"]), digest, current)
        client.set_model_version_tag(name, version.version, "champion_decision", decision.reason)
        client.set_registered_model_alias(name, NEWEST, version.version)
        if decision.champion:
            client.set_registered_model_alias(name, CHAMPION, version.version)
    except MlflowException as err:
        if created:  # no half-registered version: it goes, and the rerun registers it whole
            with contextlib.suppress(MlflowException):
                client.delete_model_version(name, version.version)
        raise RegistryError(f"the model registry at {uri} refused: {first_line(err)}; run `dvc repro` again") from None
    outcome = "is now champion" if decision.champion else "did not take champion"
    where = f"models:/{name}/{version.version}"
    print(f"{dataset}: registered {name} v{version.version} ({where}); {outcome}: {decision.reason}")
    with atomic_file(out_json) as tmp:
        write_json(
            tmp,
            {
                "registered_model": name,
                "version": int(version.version),
                "run_id": run_id,
                "champion": decision.champion,
                "decision": decision.reason,
                TEST_SET_TAG: digest,
            },
        )


def _version_of_run(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """The version this run already has (a rerun after a kill registers nothing twice)."""
    try:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    return found[0] if found else None


def _new_version(client: MlflowClient, name: str, run_id: str, model_uri: str, tags: dict[str, str]) -> ModelVersion:
    """Create the version with all its tags, or nothing: a failure deletes the half-made version."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description=f"{name} image classifiers, registered by the pipeline's register stage"
        )
    version = mlflow.register_model(model_uri, name, tags=tags)
    try:
        client.set_model_version_tag(name, version.version, "run_id", run_id)
    except MlflowException:
        client.delete_model_version(name, version.version)
        raise
    return client.get_model_version(name, version.version)

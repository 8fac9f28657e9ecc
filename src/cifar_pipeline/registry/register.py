"""The register stage: every evaluated model becomes a version in MLflow's Model Registry.

One registered model per dataset and label set (`cifar10`, `cifar100`, `cifar100-coarse`), and
two aliases:
- `newest`: the highest version number (MLflow reserves the alias name `latest`);
- `champion`: moved by `champion.decide`, on numbers the store holds for the candidate's test
  images; a rival never scored on them is scored there first, with the evaluate stage's code,
  and that score is kept on its logged model.
The stage runs on every `dvc repro` (`always_changed`): a version, registered model or alias
deleted in the store is put back and the repair printed. A version's claim to `champion` is
decided once; the rule in full, and why: docs/registry.md.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cifar_pipeline.core.errors import PipelineError, first_line, redact
from cifar_pipeline.core.files import atomic_file, read_json, write_json
from cifar_pipeline.core.layout import RUN_FILE, load_part
from cifar_pipeline.core.metric_names import TEST_KEYS
from cifar_pipeline.core.run_identity import is_recorded
from cifar_pipeline.inference.evaluation import score, test_images
from cifar_pipeline.inference.loading import ModelLoadError, load_model
from cifar_pipeline.registry.champion import Decision, Standing, decide
from cifar_pipeline.registry.lock import registration_lock
from cifar_pipeline.tracking import mlflow_models, mlflow_runs, mlflow_store

NEWEST = "newest"  # MLflow reserves "latest" (models:/<name>/latest already means the newest version)
CHAMPION = "champion"
TEST_SET_TAG = "test_set_digest"
DECISION_TAG = "champion_decision"
AGREE = 1e-9  # a metric the file holds and the store holds: the same float, written by the same stage


class RegistryError(PipelineError):
    """The registry cannot be reached, refused a registration, or cannot confirm the numbers."""


def registered_name(dataset: str, label_mode: str) -> str:
    """`cifar10`, `cifar100`, `cifar100-coarse`: one registered model per dataset and label set."""
    return f"{dataset}-{label_mode}" if label_mode == "coarse" else dataset


@dataclass(frozen=True)
class Candidate:
    """The model this workspace trained and evaluated, and its test images."""

    dataset: str
    name: str
    run_id: str
    model_uri: str
    model_id: str
    split_dir: Path
    images: MetaDataset
    count: int
    metrics: dict[str, float]  # as the store holds them


def confirmed_metrics(dataset: str, run_id: str, model_id: str | None, digest: str, metrics_json: Path) -> dict:
    """The candidate's test metrics from its logged model; refuse a metrics file that disagrees."""
    redo = f"`dvc repro -f -s evaluate@{dataset}` rewrites it from the model, then run `dvc repro`"
    if model_id is None:
        raise RegistryError(
            f"run {run_id} logged its model before models were MLflow 3 logged models, so the store holds no "
            f"test metrics of it; retrain with `dvc repro --force train@{dataset}`"
        )
    held = mlflow_models.model_scores(model_id, digest)
    if any(key not in held for key in TEST_KEYS):
        raise RegistryError(
            f"MLflow holds no test metrics of model {model_id} (run {run_id}) on these test images ({digest}); {redo}"
        )
    try:
        written = read_json(metrics_json)
    except (ValueError, UnicodeDecodeError):
        written = None
    if not isinstance(written, dict):
        raise RegistryError(f"{metrics_json} is not the evaluate stage's JSON object of test metrics; {redo}")
    wrong = [
        f"{key} {written.get(key)!r} in the file, {held[key]!r} in MLflow"
        for key in TEST_KEYS
        if not isinstance(written.get(key), int | float) or abs(float(written[key]) - held[key]) > AGREE
    ]
    if wrong:
        raise RegistryError(
            f"{metrics_json} disagrees with MLflow run {run_id} ({'; '.join(wrong)}): it was edited or is not "
            f"this model's; {redo}"
        )
    return {key: held[key] for key in TEST_KEYS}


@mlflow_store.server_errors()
def register_model(
    dataset: str,
    split_dir: Path,
    model_dir: Path,
    metrics_json: Path,
    export_json: Path,
    out_json: Path,
    min_improvement: float,
) -> None:
    """Register the evaluated model (once per run), repair what the store lost, move the aliases."""
    trained = read_json(model_dir / RUN_FILE)
    run_id = trained["run_id"]
    model_uri = trained.get("model_uri") or f"runs:/{run_id}/model"
    uri = mlflow_store.use_store()
    client = MlflowClient()
    run = mlflow_runs.training_run_of(run_id, dataset)
    params = run.data.params
    images = test_images(dataset, params, split_dir)
    model_id = mlflow_models.model_id_of(model_uri)
    metrics = confirmed_metrics(dataset, run_id, model_id, images.digest, metrics_json)
    candidate = Candidate(
        dataset=dataset,
        name=registered_name(dataset, params["data.label_mode"]),
        run_id=run_id,
        model_uri=model_uri,
        model_id=model_id,
        split_dir=split_dir,
        images=images,
        count=len(load_part(split_dir, "test").indices),
        metrics=metrics,
    )
    previous = read_json(out_json) if out_json.is_file() else {}  # persist: what DVC last recorded here
    version = None
    created = False
    try:
        with registration_lock(client, candidate.name, say=lambda line: print(f"{dataset}: {line}")) as heartbeat:
            version, created = _ensure_version(client, candidate, run, previous)
            _tag_exports(client, version, read_json(export_json))
            holder = _settle_champion(client, candidate, version, created, min_improvement, heartbeat)
            newest = max(int(v.version) for v in _versions(client, candidate.name))
            if _alias(client, candidate.name, NEWEST) != str(newest):
                client.set_registered_model_alias(candidate.name, NEWEST, str(newest))
            record = _record(candidate, version, holder)
            with atomic_file(out_json) as tmp:  # inside the lock: it agrees with the alias it just set
                write_json(tmp, record)
    except MlflowException as err:
        if created and version is not None:  # no half-registered version: it goes, and the rerun registers it whole
            with contextlib.suppress(MlflowException):
                client.delete_model_version(candidate.name, version.version)
        raise _refused(err, uri, candidate.name) from None


def _refused(err: MlflowException, uri: str, name: str) -> RegistryError:
    if mlflow_store.is_server(uri) and mlflow_store.status_of(err) in (401, 403):
        return RegistryError(mlflow_store.server_problem(err, uri, f"EDIT permission on registered model {name!r}"))
    return RegistryError(f"the model registry at {uri} refused: {first_line(err)}; run `dvc repro` again")


def _record(candidate: Candidate, version: ModelVersion, holder: str) -> dict:
    """registry/<d>.json: what the stage registered and which version holds champion."""
    return {
        "registered_model": candidate.name,
        "version": int(version.version),
        "run_id": candidate.run_id,
        "model_id": candidate.model_id,
        TEST_SET_TAG: candidate.images.digest,
        "test_images": candidate.count,
        "test_accuracy": candidate.metrics["test_accuracy"],
        "champion": holder == str(version.version),
        "champion_version": int(holder),
    }


def _tag_exports(client: MlflowClient, version: ModelVersion, table: dict[str, dict[str, float]]) -> None:
    """`export.<format>.<number>` tags from the export stage's table, set where they differ (the
    table changes when export.formats does, without a new version)."""
    for name, row in table.items():
        for key, value in row.items():
            tag = f"export.{name}.{key}"
            if version.tags.get(tag) != str(value):
                client.set_model_version_tag(version.name, version.version, tag, str(value))


def _alias(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    return list(client.search_model_versions(f"name = '{name}'"))


def _ensure_version(client: MlflowClient, candidate: Candidate, run, previous: dict) -> tuple[ModelVersion, bool]:
    """This run's version, registered now if the store does not have it (again, if it lost it)."""
    name = candidate.name
    say = f"{candidate.dataset}: "
    try:
        client.get_registered_model(name)
    except MlflowException:
        if previous.get("registered_model") == name:
            print(f"{say}repaired: the registered model {name} was gone from the store; created it again")
        client.create_registered_model(
            name, description=f"{name} image classifiers, registered by the pipeline's register stage"
        )
    found = client.search_model_versions(f"name = '{name}' and run_id = '{candidate.run_id}'")
    if found:
        version = found[0]
        print(f"{say}{name} v{version.version} is this model's version (models:/{name}/{version.version}), as before")
        return version, False
    tags = {
        **{key: str(value) for key, value in candidate.metrics.items()},
        TEST_SET_TAG: candidate.images.digest,
        "test_images": str(candidate.count),
        "dvc_experiment": run.data.tags.get("dvc_experiment", ""),
        "git_commit": run.data.tags.get("git_commit", ""),
        "recipe": run.data.tags.get("recipe", ""),
        **{
            f"param.{key}": redact(value)  # no URL login reaches a tag, even one logged by hand
            for key, value in run.data.params.items()
            if is_recorded(key)
        },
    }
    # run_id with the other tags, in the one request that creates the version: no kill can fall between
    version = mlflow.register_model(candidate.model_uri, name, tags={**tags, "run_id": candidate.run_id})
    if previous.get("registered_model") == name and previous.get("run_id") == candidate.run_id:
        print(
            f"{say}repaired: v{previous['version']} of {name} was gone from the store; registered again as "
            f"v{version.version}"
        )
    print(f"{say}registered {name} v{version.version} (models:/{name}/{version.version})")
    return client.get_model_version(name, version.version), True


def _settle_champion(
    client: MlflowClient,
    candidate: Candidate,
    version: ModelVersion,
    created: bool,
    min_improvement: float,
    heartbeat,
) -> str:
    """Move `champion` by the rule and return the version that holds it."""
    name, mine, say = candidate.name, str(version.version), f"{candidate.dataset}: "
    holder = _alias(client, name, CHAMPION)
    if holder == mine:
        print(f"{say}v{mine} holds champion")
        return mine
    if holder is not None and not created and DECISION_TAG in version.tags:
        print(f"{say}v{holder} holds champion; v{mine}'s claim was decided: {version.tags[DECISION_TAG]}")
        return holder
    me = Standing(mine, candidate.metrics["test_accuracy"])
    champion = holder and _standing(client, candidate, client.get_model_version(name, holder), heartbeat)
    others: list[Standing] = []
    if not champion:  # none, or one whose numbers cannot be confirmed: the best other version instead
        rivals = [v for v in _versions(client, name) if str(v.version) not in (mine, holder)]
        others = [s for v in rivals if (s := _standing(client, candidate, v, heartbeat)) is not None]
        if others or not created:
            print(f"{say}repaired: no version of {name} held a confirmed champion; deciding on these test images")
    decision: Decision = decide(me, champion or None, others, min_improvement, candidate.count)
    client.set_model_version_tag(name, mine, DECISION_TAG, decision.reason)
    if decision.holder != holder:
        client.set_registered_model_alias(name, CHAMPION, decision.holder)
    outcome = "is now champion" if decision.holder == mine else f"v{decision.holder} holds champion"
    print(f"{say}{outcome}: {decision.reason}")
    return decision.holder


def _standing(client: MlflowClient, candidate: Candidate, version: ModelVersion, heartbeat) -> Standing | None:
    """A rival's test accuracy on the candidate's images: held by the store, or scored now and kept there.

    None, with a printed line, for a version whose model cannot be loaded or holds other classes:
    its numbers cannot be confirmed, so it cannot hold `champion`.
    """
    name, number = candidate.name, str(version.version)
    model_id = version.model_id or mlflow_models.model_id_of(version.source)
    if model_id:
        held = mlflow_models.model_scores(model_id, candidate.images.digest)
        if "test_accuracy" in held:
            return Standing(number, held["test_accuracy"])
    try:
        result = score(load_model(f"models:/{name}/{number}"), candidate.split_dir, f"{name} v{number}", "skipped")
    except (ModelLoadError, PipelineError) as err:
        print(f"{candidate.dataset}: v{number} is left out of the comparison: {redact(str(err))}")
        return None
    with mlflow.start_run(
        experiment_id=mlflow_store.configure(),
        run_name=f"{name}-v{number}-on-{candidate.images.digest[:8]}",
        tags={
            "dataset": candidate.dataset,
            "mlflow.parentRunId": candidate.run_id,  # shown under the candidate's run: the evidence of its decision
            "scored_version": f"{name}/{number}",
        },
    ):
        mlflow.log_input(candidate.images, context="test")
        mlflow.log_metrics(result.metrics(), model_id=model_id, dataset=candidate.images)
    heartbeat()
    print(
        f"{candidate.dataset}: scored v{number} on these {candidate.count} test images "
        f"(the store had no score of it on them): test accuracy {result.accuracy:.4f}"
    )
    return Standing(number, result.accuracy)

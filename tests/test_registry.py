"""The register stage against a real MLflow store: the champion is decided on the same images,
by numbers the store holds, repaired when the store lost something, and never raced onto the worse
model. Models are one-layer Keras nets that always answer one class, logged and evaluated by the
pipeline's own code, so each accuracy is known in advance: class k's share of the test images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cifar_pipeline.core.files import save_arrays, write_json
from cifar_pipeline.core.layout import CLASSES_FILE, MODEL_FILE, RUN_FILE
from cifar_pipeline.inference.evaluation import evaluate_model
from cifar_pipeline.registry import lock
from cifar_pipeline.registry.register import RegistryError, register_model, registered_name
from cifar_pipeline.tracking import mlflow_datasets, mlflow_runs, mlflow_store
from cifar_pipeline.tracking.logged_model import log_model
from team_servers import SERVER_ENV, Service, answers, free_port
from testkit.project import ROOT, environment

CLASSES = [f"c{k}" for k in range(10)]
COUNTS = [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]  # of 100 test images: "always class k" scores COUNTS[k] / 100
LABELS = np.repeat(np.arange(10), COUNTS)
# A mirror URL with a login and a presigned signature: neither may reach a param, tag or dataset source.
MIRROR_URL = "https://reader:s3cret-pw@mirror.example.org/cifar-10.tar.gz?X-Amz-Signature=abc123"
PARAMS = {"dataset": "cifar10", "data.url": MIRROR_URL, "data.md5": "0" * 32, "data.label_mode": "label"}
MARGIN = 0.005


def split_dir(folder: Path, indices: np.ndarray) -> Path:
    """A split folder's test part: which images (indices into the archive's test set) and labels."""
    folder.mkdir()
    save_arrays(
        folder,
        test_images=np.zeros((len(indices), 32, 32, 3), np.uint8),
        test_labels=LABELS[indices].astype(np.int64),
        test_indices=np.asarray(indices, np.int64),
    )
    write_json(folder / "classes.json", {"label_mode": "label", "names": CLASSES})
    return folder


@pytest.fixture
def store(monkeypatch, tmp_path):
    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "DVC_"))]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # the default store: ./mlflow.db, artifacts in ./mlruns
    return tmp_path


@pytest.fixture
def full(store):
    return split_dir(store / "full", np.arange(100))


@pytest.fixture
def quick(store):
    """A quick try's test subsample: the first 64 images, classes 0-7 (the 36 of classes 8 and 9 left out)."""
    return split_dir(store / "quick", np.arange(64))


def always(klass: int) -> keras.Model:
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    logits = np.full(10, -5.0)
    logits[klass] = 5.0
    x = keras.layers.Dense(10, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(logits))(x)
    return keras.Model(inputs, keras.layers.Softmax()(x))


def trained(root: Path, split: Path, klass: int, seed: int = 0) -> Path:
    """What train + evaluate leave: a model folder, an MLflow run with a logged model, a metrics file."""
    folder = root / f"model-{klass}-{uuid.uuid4().hex[:6]}"
    model = always(klass)
    with mlflow_runs.training_run("cifar10", PARAMS | {"train.seed": seed, "train.klass": klass}) as (run_id, _):
        uri = log_model(
            model, np.zeros((8, 32, 32, 3), np.uint8), {"names": CLASSES, "dataset": "cifar10", "label_mode": "label"}
        )
    (folder / "model").mkdir(parents=True)
    model.save(folder / "model" / MODEL_FILE)
    write_json(folder / "model" / RUN_FILE, {"run_id": run_id, "model_uri": uri})
    write_json(folder / "model" / CLASSES_FILE, {"names": CLASSES, "dataset": "cifar10", "label_mode": "label"})
    evaluate_model("cifar10", split, folder / "model", folder / "metrics.json", folder / "c.csv", folder / "p.csv")
    write_json(folder / "export.json", {"litert_int8": {"test_accuracy": 0.25, "size_mb": 0.01}})
    return folder


def register(folder: Path, split: Path, capsys=None) -> dict:
    register_model(
        "cifar10",
        split,
        folder / "model",
        folder / "metrics.json",
        folder / "export.json",
        folder / "registry.json",
        MARGIN,
    )
    return json.loads((folder / "registry.json").read_text())


def champion() -> str:
    return str(MlflowClient().get_model_version_by_alias("cifar10", "champion").version)


def test_the_first_version_takes_champion_and_the_record_holds_the_stores_numbers(full, capsys):
    record = register(trained(full.parent, full, 9), full)
    assert record | {"run_id": None, "model_id": None} == {
        "registered_model": "cifar10",
        "version": 1,
        "run_id": None,
        "model_id": None,
        "test_set_digest": mlflow_datasets.images_digest("0" * 32, "label", np.arange(100)),
        "test_images": 100,
        "test_accuracy": 0.19,
        "champion": True,
        "champion_version": 1,
    }
    version = MlflowClient().get_model_version("cifar10", "1")
    assert version.tags["champion_decision"] == "no other version to compare with"
    assert version.tags["recipe"] == MlflowClient().get_run(record["run_id"]).data.tags["recipe"]
    assert version.tags["export.litert_int8.test_accuracy"] == "0.25"  # the export table, as tags
    assert "registered cifar10 v1" in capsys.readouterr().out


def test_no_url_secret_reaches_a_param_tag_or_dataset_source(full):
    record = register(trained(full.parent, full, 9), full)
    run = MlflowClient().get_run(record["run_id"])
    shown = "https://reader:***@mirror.example.org/cifar-10.tar.gz?***"
    assert run.data.params["data.url"] == shown
    assert MlflowClient().get_model_version("cifar10", "1").tags["param.data.url"] == shown
    sources = {d.dataset.name: json.loads(d.dataset.source)["url"] for d in run.inputs.dataset_inputs}
    assert sources == {"cifar10-test": shown}
    everything = json.dumps([run.to_dictionary(), MlflowClient().get_model_version("cifar10", "1").tags])
    assert "s3cret" not in everything and "abc123" not in everything


def test_the_test_metrics_are_the_logged_models_on_the_test_dataset(full):
    folder = trained(full.parent, full, 9)
    model_id = json.loads((folder / "model" / RUN_FILE).read_text())["model_uri"].removeprefix("models:/")
    [metric] = [m for m in mlflow.get_logged_model(model_id).metrics if m.key == "test_accuracy"]
    assert (metric.value, metric.dataset_name) == (0.19, "cifar10-test")
    best = mlflow.search_logged_models(
        experiment_ids=[mlflow_store.configure()],
        output_format="list",
        order_by=[{"field_name": "metrics.test_accuracy", "ascending": False}],
    )
    assert best[0].model_id == model_id


def test_a_quick_try_champion_is_scored_on_the_full_test_set_and_loses_it(full, quick, capsys):
    """The README's quick try first (a near-chance model on a subsample), then a real run."""
    lucky = trained(full.parent, quick, 7)  # 15 of the subsample's 64 images: 0.234
    assert register(lucky, quick)["champion"]
    real = trained(full.parent, full, 8)  # 0.17 on all 100; the quick try's model scores 0.15 there
    record = register(real, full)
    assert record["champion"] and champion() == "2"
    out = capsys.readouterr().out
    assert "scored v1 on these 100 test images (the store had no score of it on them): test accuracy 0.1500" in out
    tags = MlflowClient().get_model_version("cifar10", "2").tags
    assert (
        tags["champion_decision"] == "test accuracy 0.1700 >= champion v1's 0.1500 +0.005 on the same 100 test images"
    )
    # the score is kept on v1's logged model, from a run shown under the candidate's run
    [scoring] = mlflow.search_runs(
        [mlflow_store.configure()], filter_string="tags.scored_version = 'cifar10/1'", output_format="list"
    )
    assert scoring.data.tags["mlflow.parentRunId"] == record["run_id"]
    # ... so the next quick try scores the champion on the subsample, and a worse model does not take it
    worse = trained(full.parent, quick, 6)  # 13/64 = 0.203 on the subsample, v2 (always 8) scores 0 there
    assert register(worse, quick)["champion"]  # it is better on the subsample: that is the rule
    assert champion() == "3"


def test_a_metrics_file_that_disagrees_with_its_run_is_refused_and_nothing_is_registered(full):
    folder = trained(full.parent, full, 9)
    (folder / "metrics.json").write_text(json.dumps({"test_loss": 0.1, "test_accuracy": 0.99, "test_top5_accuracy": 1}))
    with pytest.raises(RegistryError) as err:
        register(folder, full)
    message = str(err.value)
    assert "disagrees with MLflow run" in message and "test_accuracy 0.99 in the file, 0.19 in MLflow" in message
    assert "`dvc repro -f -s evaluate@cifar10`" in message and "\n" not in message
    for text in ('{"test_loss": 8.1, "test_accuracy": "high", "test_top5_accuracy": 0.37}', "{not json", "[]"):
        (folder / "metrics.json").write_text(text)
        with pytest.raises(RegistryError, match="metrics.json (disagrees|is not the evaluate stage's JSON)"):
            register(folder, full)
    assert MlflowClient().search_model_versions("name = 'cifar10'") == []


def test_register_again_changes_nothing_and_puts_back_what_the_store_lost(full, capsys):
    first = trained(full.parent, full, 8)
    second = trained(full.parent, full, 9)
    register(first, full)
    record = register(second, full)
    assert record["champion"]
    capsys.readouterr()
    assert register(second, full) == record  # idempotent: same record, no new version
    assert "v2 holds champion" in capsys.readouterr().out
    client = MlflowClient()
    assert len(client.search_model_versions("name = 'cifar10'")) == 2

    client.delete_registered_model_alias("cifar10", "champion")
    weak = trained(full.parent, full, 1)  # 0.03: once took champion as "no champion yet"
    assert not register(weak, full)["champion"]
    out = capsys.readouterr().out
    assert "no version of cifar10 held a confirmed champion" in out and champion() == "2"

    client.delete_registered_model("cifar10")
    again = register(second, full)
    assert "repaired: the registered model cifar10 was gone from the store; created it again" in capsys.readouterr().out
    assert again["version"] == 1 and again["champion"] and champion() == "1"
    assert str(client.get_model_version_by_alias("cifar10", "newest").version) == "1"


def test_a_lock_left_by_a_killed_register_is_taken_over_and_a_live_one_waited_for(store, monkeypatch):
    client = MlflowClient(mlflow_store.use_store())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"host": lock.socket.gethostname(), "pid": dead.stdout.strip(), "heartbeat": f"{time.time()}"}
    client.create_registered_model("cifar10.lock", tags=stale)
    said: list[str] = []
    with lock.registration_lock(client, "cifar10", say=said.append):
        assert client.get_registered_model("cifar10.lock").tags["pid"] == str(os.getpid())
    assert said == [
        f"taking over the registry lock cifar10.lock of {stale['host']}:{stale['pid']}: its process "
        f"{stale['pid']} on this machine is gone"
    ]
    assert client.search_registered_models("name = 'cifar10.lock'") == []

    client.create_registered_model("cifar10.lock", tags=lock._me())  # alive: this very process
    monkeypatch.setattr(lock, "WAIT_S", 1.0)
    waiting = lock.registration_lock(client, "cifar10", say=said.append)
    with pytest.raises(lock.LockTimeout, match="delete the registered model cifar10.lock"), waiting:
        pass


RACER = """
import pathlib, sys, time
from cifar_pipeline.registry.register import register_model
folder, split, go = map(pathlib.Path, sys.argv[1:])
(folder / "ready").touch()
while not go.exists():
    time.sleep(0.005)
register_model(
    "cifar10", split, folder / "model", folder / "metrics.json", folder / "export.json", folder / "registry.json", 0.005
)
"""


def race(full: Path, rounds: int, env: dict[str, str]) -> None:
    """Each round two better models register at the same moment; the better must end as champion."""
    client = MlflowClient(mlflow_store.use_store())
    base = trained(full.parent, full, 0)
    register(base, full)
    for r in range(rounds):
        worse, better = (trained(full.parent, full, k) for k in (2 * r + 1, 2 * r + 2))
        go = full.parent / f"go-{r}"
        racers = [
            subprocess.Popen(
                [sys.executable, "-c", RACER, str(f), str(full), str(go)],
                env=environment() | {"PYTHONPATH": str(ROOT / "src")} | env,
                cwd=full.parent,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for f in ((worse, better) if r % 2 else (better, worse))
        ]
        deadline = time.monotonic() + 120
        while not all((f / "ready").exists() for f in (worse, better)) and time.monotonic() < deadline:
            time.sleep(0.05)  # both have imported the stage's code: now they start together
        go.touch()
        outputs = [p.communicate(timeout=300)[0] for p in racers]
        assert [p.returncode for p in racers] == [0, 0], outputs
        records = {f: json.loads((f / "registry.json").read_text()) for f in (worse, better)}
        holder = str(client.get_model_version_by_alias("cifar10", "champion").version)
        assert holder == str(records[better]["version"]), (r, outputs)
        assert records[better]["champion"]
        # the worse one's record agrees with the alias as it stood when it let go of the lock
        if records[worse]["champion"]:  # it went first, and the better one then beat it
            decision = client.get_model_version("cifar10", holder).tags["champion_decision"]
            assert f"champion v{records[worse]['version']}'s" in decision, decision
        else:
            assert records[worse]["champion_version"] == records[better]["version"]
    assert client.search_registered_models("name = 'cifar10.lock'") == []


@pytest.mark.slow
def test_two_registrations_at_once_on_sqlite_end_on_the_better_model(full):
    race(full, rounds=2, env={})


@pytest.fixture
def tracking_server(store, monkeypatch):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = Service(
        "mlflow",
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{store / 'server.db'}",
            "--artifacts-destination",
            str(store / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        environment() | SERVER_ENV,
        store,
    )
    try:
        server.start(lambda: answers(f"{url}/health"))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        yield url
    finally:
        server.stop()


@pytest.mark.slow
def test_two_registrations_at_once_on_a_tracking_server_end_on_the_better_model(tracking_server, full):
    race(full, rounds=2, env={"MLFLOW_TRACKING_URI": tracking_server})


def test_one_registered_model_per_dataset_and_label_set():
    assert [registered_name("cifar10", "label"), registered_name("cifar100", "fine")] == ["cifar10", "cifar100"]
    assert registered_name("cifar100", "coarse") == "cifar100-coarse"


def test_a_registry_that_refuses_the_user_names_the_permission_to_ask_for(full, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED

    folder = trained(full.parent, full, 9)

    def refuse(*args, **kwargs):
        raise MlflowException("Permission denied", error_code=PERMISSION_DENIED)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    monkeypatch.setattr(mlflow_store, "is_server", lambda uri: True)  # as a team server answers: 403
    monkeypatch.setattr(mlflow_store, "check_store", lambda uri: None)
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refuse)
    with pytest.raises(
        RegistryError, match=r"does not let user 'bob' do this \(403.*EDIT permission on registered model 'cifar10'"
    ):
        register(folder, full)
    assert MlflowClient().search_model_versions("name='cifar10'") == []  # no half-registered version left


def test_cifar_predict_tells_a_missing_store_from_a_model_whose_files_are_gone(full, tmp_path, monkeypatch):
    import shutil

    from cifar_pipeline.inference.loading import ModelLoadError, load_model

    register(trained(full.parent, full, 9), full)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # outside the project root: MLflow would make an empty mlflow.db here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # as in a new cifar-predict process
    with pytest.raises(ModelLoadError, match=r"there is no MLflow store here \(.*mlflow.db does not exist\)"):
        load_model("models:/cifar10@champion")
    assert list(elsewhere.iterdir()) == []
    monkeypatch.chdir(full.parent)
    mlflow.set_tracking_uri("")
    shutil.rmtree(full.parent / "mlruns")  # the artifact store lost the model's files
    with pytest.raises(ModelLoadError, match=r"it is v1 of cifar10 in .*, but its files .* cannot be read"):
        load_model("models:/cifar10@champion")
    with pytest.raises(ModelLoadError, match=r"check the name, alias or run id"):
        load_model("models:/cifar10@nosuch")

"""`dvc repro` end to end in a throwaway copy of the project, both datasets, tiny params.

One module-scoped project (the `project` fixture: the first `dvc repro`) is shared: the tests
that read it come first, then edits (a train param, a URL, a split param, each dataset's own
params, a module), a SIGKILL and a Ctrl-C during training and their resumes, queued experiments. Each
test asks only that the project is up to date when it starts (every test leaves it so), so
each also runs alone: `pytest tests/test_pipeline_e2e.py::<name>`. Each states what a user
would see.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cifar_pipeline.core.layout import EXPORT_FILES
from testkit.archives import build_archive
from testkit.project import ROOT, create, edit_params, environment, run, run_queue, stages_run, start_training

pytestmark = pytest.mark.e2e

PER_EPOCH = ["loss", "accuracy", "top5_accuracy", "val_loss", "val_accuracy", "val_top5_accuracy", "learning_rate"]
TEST_METRICS = ["test_loss", "test_accuracy", "test_top5_accuracy"]
DATASETS = ("cifar10", "cifar100")


@pytest.fixture(scope="module")
def project(tmp_path_factory, archives, session_server):
    data = {
        # CIFAR-10 over HTTP (the real download code), CIFAR-100 as a file:// URL.
        "cifar10": {"url": session_server.url(archives["cifar10"][0].name), "md5": archives["cifar10"][1]},
        "cifar100": {"url": archives["cifar100"][0].as_uri(), "md5": archives["cifar100"][1]},
    }
    formats = yaml.safe_load((ROOT / "params.yaml").read_text())["export"]["formats"]
    path = create(tmp_path_factory.mktemp("e2e") / "project", data, export={"formats": formats})
    # System metrics every second: these runs last seconds, not hours.
    first = run(path, "dvc", "repro", env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"})
    return path, first.stdout


def client(project_dir: Path) -> MlflowClient:
    mlflow.set_tracking_uri(f"sqlite:///{project_dir / 'mlflow.db'}")
    return MlflowClient()


def runs_by_dataset(project_dir: Path) -> dict[str, list]:
    c = client(project_dir)
    experiment = c.get_experiment_by_name("cifar")
    found: dict[str, list] = {name: [] for name in DATASETS}
    for r in c.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]):
        found[r.data.tags["dataset"]].append(r)
    return found


def test_first_repro_runs_every_stage_and_writes_every_output(project):
    path, output = project
    ran = stages_run(output)
    assert sorted(ran) == sorted(
        ["check_params"]
        + [
            f"{stage}@{d}"
            for stage in ("recipe", "download", "split", "normalize", "train", "evaluate", "export", "register")
            for d in DATASETS
        ]
    )
    assert (path / "data/params-checked.txt").is_file()
    for d in DATASETS:
        for out in (f"data/raw/{d}", f"data/split/{d}", f"models/{d}"):
            assert (path / out).is_dir(), out
        for out in (
            f"metrics/{d}.json",
            f"plots/loss/{d}.csv",
            f"plots/accuracy/{d}.csv",
            f"plots/confusion/{d}.csv",
            f"plots/per_class/{d}.csv",
            f"models/{d}/model.keras",
            f"models/{d}/mlflow_run.json",
            f"data/stats/{d}.json",
            f"data/split/{d}/train_indices.npy",
            f"data/split/{d}/val_indices.npy",
        ):
            assert (path / out).is_file(), out
    # The model normalises its own input: the only image arrays are the uint8 ones, once.
    assert not (path / "data/normalized").exists()
    assert sorted(json.loads((path / "data/stats/cifar10.json").read_text())) == ["mean", "std"]
    for array in (path / "data/split").rglob("*_images.npy"):
        assert np.load(array, mmap_mode="r").dtype == np.uint8
    assert len(list((path / "data").rglob("*.tmp"))) == 0


def test_one_finished_run_per_dataset_with_every_epoch_and_test_metric(project):
    path, _ = project
    c = client(path)
    for d, found in runs_by_dataset(path).items():
        assert len(found) == 1, d
        r = found[0]
        assert r.info.status == "FINISHED"
        assert r.info.run_name.startswith(f"{d}-")
        assert r.data.tags["git_commit"] and r.data.tags["dataset"] == d
        for key in PER_EPOCH:
            assert [m.step for m in c.get_metric_history(r.info.run_id, key)] == [1, 2], key
        for key in TEST_METRICS:
            assert key in r.data.metrics
        assert r.data.params["train.epochs"] == "2" and r.data.params["dataset"] == d
        assert json.loads((path / f"models/{d}/mlflow_run.json").read_text())["run_id"] == r.info.run_id
        assert json.loads((path / f"metrics/{d}.json").read_text())["test_accuracy"] == pytest.approx(
            r.data.metrics["test_accuracy"]
        )
        artifacts = {a.path for a in c.list_artifacts(r.info.run_id, "plots")}
        assert artifacts == {"plots/training_curves.png", "plots/confusion_matrix.png"}


def test_runs_of_both_datasets_share_every_param_key_and_name_their_data(project):
    """mlflow ui's Compare view lines up params by key; the Dataset column shows the inputs."""
    path, _ = project
    c = client(path)
    experiment = c.get_experiment_by_name("cifar")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "CIFAR-10 and CIFAR-100" in experiment.tags["mlflow.note.content"]
    first = {d: found[0] for d, found in runs_by_dataset(path).items()}
    keys = {d: set(r.data.params) for d, r in first.items()}
    assert keys["cifar10"] == keys["cifar100"]
    assert {"dataset", "data.url", "data.md5", "data.label_mode"} <= keys["cifar10"]
    assert not any(key.startswith(("data.cifar10", "data.cifar100")) for key in keys["cifar10"])
    assert first["cifar100"].data.params["data.label_mode"] == "fine"
    for d, r in first.items():
        full = c.get_run(r.info.run_id)
        inputs = {i.dataset.name: i for i in full.inputs.dataset_inputs}
        assert sorted(inputs) == [f"{d}-test", f"{d}-train", f"{d}-val"]
        assert {i.tags[0].value for i in inputs.values()} == {"training", "validation", "test"}
        assert all(json.loads(i.dataset.source) for i in inputs.values())
        assert len({i.dataset.digest for i in inputs.values()}) == 3


def test_logged_model_predicts_on_raw_uint8_with_pyfunc(project):
    path, _ = project
    client(path)
    for d, classes in (("cifar10", 10), ("cifar100", 100)):
        r = runs_by_dataset(path)[d][0]
        model = mlflow.pyfunc.load_model(f"runs:/{r.info.run_id}/model")
        images = np.load(path / f"data/split/{d}/test_images.npy")[:7]
        assert images.dtype == np.uint8
        probabilities = np.asarray(model.predict(images))
        assert probabilities.shape == (7, classes)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
        # no input schema, which would cast 0.5 to 0 before the model could refuse it; the contract
        # is in the metadata, and the model refuses anything else
        assert model.metadata.signature.inputs is None and "uint8" in model.metadata.metadata["input"]
        with pytest.raises(MlflowException, match="whole numbers 0-255"):
            model.predict(images / 255)


def test_the_champion_gets_a_dockerfile_that_installs_the_pinned_versions(project, tmp_path):
    """The README's container recipe, without a Docker daemon: MLflow's generated Dockerfile
    and the model folder it copies, whose requirements are the versions that trained it."""
    path, _ = project
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{path / 'mlflow.db'}"}
    run(
        path,
        "mlflow",
        "models",
        "generate-dockerfile",
        "-m",
        "models:/cifar10@champion",
        "-d",
        str(tmp_path / "image"),
        "--env-manager",
        "local",
        env=env,
    )
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line)
    dockerfile = (tmp_path / "image/Dockerfile").read_text()
    assert f"pip install mlflow=={pins['mlflow']}" in dockerfile and "COPY model_dir /opt/ml/model" in dockerfile
    model = tmp_path / "image/model_dir"
    required = set((model / "requirements.txt").read_text().split())
    assert {f"{name}=={pins[name]}" for name in ("tensorflow", "keras", "mlflow")} <= required
    assert any(model.rglob("*.keras")) and "served_model" in (model / "MLmodel").read_text()


def test_dvc_metrics_and_plots(project):
    path, _ = project
    metrics = run(path, "dvc", "metrics", "show", "--json").stdout
    shown = json.loads(metrics)
    values = next(iter(shown.values()))["data"]
    for d in DATASETS:
        assert set(values[f"metrics/{d}.json"]["data"]) == set(TEST_METRICS)
        assert f"metrics/export/{d}.json" in values
    run(path, "dvc", "plots", "show", "-o", "plots_html")
    html = (path / "plots_html/index.html").read_text()
    for d in DATASETS:
        for kind in ("loss", "accuracy", "confusion", "per_class"):
            assert f"plots_{kind}_{d}_csv" in html
    assert "cdn.jsdelivr.net/npm/vega@" in html  # DVC's default template: blank offline


EXPORT_KEYS = {"test_accuracy", "test_top5_accuracy", "accuracy_change", "size_mb", "latency_b1_ms", "latency_b256_ms"}


def test_every_format_is_exported_scored_and_recorded_in_dvc_and_mlflow(project):
    """The export table: a DVC metric, metrics and an artifact of the logged model, tags on the version."""
    path, _ = project
    formats = yaml.safe_load((path / "params.yaml").read_text())["export"]["formats"]
    shown = next(iter(json.loads(run(path, "dvc", "metrics", "show", "--json").stdout).values()))["data"]
    c = registry(path)
    for d in DATASETS:
        table = json.loads((path / f"metrics/export/{d}.json").read_text())
        assert shown[f"metrics/export/{d}.json"]["data"] == table
        assert set(table) == {"keras", *formats} and all(set(row) == EXPORT_KEYS for row in table.values())
        assert table["keras"]["test_accuracy"] == round(
            json.loads((path / f"metrics/{d}.json").read_text())["test_accuracy"], 4
        )
        for name in formats:
            assert (path / "exports" / d / EXPORT_FILES[name]).exists(), name
        model_id = json.loads((path / f"models/{d}/mlflow_run.json").read_text())["model_uri"].removeprefix("models:/")
        logged = {m.key: m for m in mlflow.get_logged_model(model_id).metrics}
        assert logged["litert_int8/test_accuracy"].value == table["litert_int8"]["test_accuracy"]
        assert logged["litert_int8/test_accuracy"].dataset_name == f"{d}-test"
        assert "export_table.json" in {a.path for a in c.list_logged_model_artifacts(model_id)}
        tags = c.get_model_version(d, "1").tags
        assert tags["export.onnx.size_mb"] == str(table["onnx"]["size_mb"])


def test_offline_plots_template_inlines_vega(project):
    """docs/offline.md's offline path: after one command, `dvc plots show` needs no network."""
    path, _ = project
    run(path, "sh", "-c", "PYTHONPATH=src python -m cifar_pipeline.tracking.offline_plots")
    assert "html_template = tmp/plots-offline.html" in (path / ".dvc/config.local").read_text()
    run(path, "dvc", "plots", "show", "-o", "plots_offline")
    html = (path / "plots_offline/index.html").read_text()
    assert "cdn.jsdelivr" not in html and "<script src" not in html
    assert "vegaEmbed" in html and "plots_loss_cifar10_csv" in html


def registry(project_dir: Path):
    client(project_dir)
    return MlflowClient()


def test_each_evaluated_model_is_a_registered_version_with_tags_and_aliases(project):
    path, output = project
    c = registry(path)
    for d in DATASETS:
        [run] = runs_by_dataset(path)[d]
        version = c.get_model_version_by_alias(d, "champion")
        assert str(version.version) == str(c.get_model_version_by_alias(d, "newest").version) == "1"
        assert version.run_id == run.info.run_id
        tags = version.tags
        assert float(tags["test_accuracy"]) == pytest.approx(run.data.metrics["test_accuracy"])
        assert {"test_loss", "test_top5_accuracy", "test_set_digest", "git_commit", "param.train.epochs"} <= set(tags)
        assert tags["champion_decision"] == "no other version to compare with"
        assert tags["recipe"] == run.data.tags["recipe"]
        record = json.loads((path / f"registry/{d}.json").read_text())
        assert record["registered_model"] == d and record["version"] == 1 and record["champion"]
        assert record["test_accuracy"] == run.data.metrics["test_accuracy"]
        assert f"registered {d} v1" in output


def test_runs_record_system_metrics_and_a_recipe_and_models_an_input_example(project):
    """MLflow 3's model-centric view: test metrics on the logged model and the test dataset."""
    path, _ = project
    runs = {d: runs_by_dataset(path)[d][0] for d in DATASETS}
    recipes = {d: r.data.tags["recipe"] for d, r in runs.items()}
    assert len(set(recipes.values())) == 2  # the dataset is a param: one recipe per dataset
    for d, r in runs.items():
        assert "system/cpu_utilization_percentage" in r.data.metrics
        assert "system/system_memory_usage_megabytes" in r.data.metrics
        model_id = json.loads((path / f"models/{d}/mlflow_run.json").read_text())["model_uri"].removeprefix("models:/")
        logged = mlflow.get_logged_model(model_id)
        test = {m.key: m for m in logged.metrics if m.dataset_name == f"{d}-test"}
        assert test["test_accuracy"].value == r.data.metrics["test_accuracy"]
        assert test["test_accuracy"].dataset_digest == registry(path).get_model_version(d, "1").tags["test_set_digest"]
        model = mlflow.models.get_model_info(f"models:/{model_id}")
        assert model.saved_input_example_info["type"] == "ndarray"
        example = json.loads(
            Path(
                mlflow.artifacts.download_artifacts(f"{logged.artifact_location}/serving_input_example.json")
            ).read_text()
        )
        assert np.asarray(example["inputs"]).shape == (2, 32, 32, 3)


def predict(path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The `cifar-predict` command itself, as users run it."""
    return run(path, "cifar-predict", *args, check=check)


@pytest.fixture
def predict_here(project, monkeypatch, capsys):
    """`cifar-predict`'s main in this process, in the project root: (exit code, stdout, stderr).

    The same code as the command; TensorFlow is imported once here instead of ~9 s a call.
    """
    from cifar_pipeline.inference.predict import main

    monkeypatch.chdir(project[0])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


@pytest.fixture(scope="module")
def user_inputs(project, archives, tmp_path_factory):
    """What users have: odd-sized photos in several modes, a folder, a .npy, an official batch."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (47, 61, 3), dtype=np.uint8)).save(folder / "odd.png")
    Image.fromarray(rng.integers(0, 256, (80, 50), dtype=np.uint8), "L").save(folder / "grey.jpg")
    Image.fromarray(rng.integers(0, 256, (33, 33, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    np.save(folder / "three.npy", rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    with tarfile.open(archives["cifar10"][0]) as tar:
        (folder / "test_batch.bin").write_bytes(tar.extractfile("cifar-10-batches-bin/test_batch.bin").read())
    with tarfile.open(archives["cifar100"][0]) as tar:
        (folder / "c100_test.bin").write_bytes(tar.extractfile("cifar-100-binary/test.bin").read())
    return folder


def test_predict_prints_the_models_own_top5_for_every_kind_of_input(project, user_inputs, predict_here):
    from cifar_pipeline.inference.predict import top_k
    from cifar_pipeline.inference.user_images import read_inputs

    path, _ = project
    images = user_inputs
    model = keras.models.load_model(path / "models/cifar10/model.keras")
    names = json.loads((path / "models/cifar10/classes.json").read_text())["names"]
    inputs = [
        images / "odd.png",
        images / "grey.jpg",
        images / "alpha.png",
        images / "three.npy",
        images / "test_batch.bin",
    ]
    expected = read_inputs(inputs, 10)
    want = top_k(model.predict(expected.images, verbose=0), names)
    run_id = runs_by_dataset(path)["cifar10"][0].info.run_id
    outputs = [predict(path, "models:/cifar10@champion", *map(str, inputs), "--format", "json").stdout]  # the command
    for source in (f"runs:/{run_id}/model", "models/cifar10/model.keras"):
        code, out, _ = predict_here(source, *map(str, inputs), "--format", "json")
        assert code == 0
        outputs.append(out)
    for output in outputs:
        out = json.loads(output)
        assert [row["input"] for row in out] == expected.names
        got = [[(p["class"], p["probability"]) for p in row["top5"]] for row in out]
        for g, w in zip(got, want, strict=True):
            assert [c for c, _ in g] == [c for c, _ in w]
            np.testing.assert_allclose([p for _, p in g], [p for _, p in w], atol=1e-5)
    code, table, _ = predict_here("models:/cifar10@champion", str(images))  # a folder: its three images
    assert code == 0
    assert table.splitlines()[0].startswith("input") and len(table.splitlines()) == 4 and "odd.png" in table
    code, csv_out, _ = predict_here("models:/cifar10@champion", str(images / "odd.png"), "--format", "csv")
    assert code == 0
    assert csv_out.splitlines()[0] == "input,rank,class,probability" and len(csv_out.splitlines()) == 6


@pytest.mark.parametrize(
    ("model", "given", "message"),
    [
        ("models:/cifar10@nosuch", "odd.png", "cannot load models:/cifar10@nosuch"),
        ("models:/cifar10@champion", "three.npy.txt", "is not an image"),
        ("models:/cifar10@champion", "empty", "holds no images"),
        ("models:/cifar10@champion", "wrong.npy", "expected uint8 (N, 32, 32, 3)"),
        ("models:/cifar10@champion", "c100_test.bin", "is a cifar100 batch, but the model has 10 classes"),
        ("models:/cifar100@champion", "test_batch.bin", "is a cifar10 batch, but the model has 100 classes"),
    ],
)
def test_predict_bad_input_is_one_line(user_inputs, predict_here, model, given, message):
    (user_inputs / "three.npy.txt").write_text("not an image")
    (user_inputs / "empty").mkdir(exist_ok=True)
    np.save(user_inputs / "wrong.npy", np.zeros((2, 28, 28), np.float32))
    code, out, err = predict_here(model, str(user_inputs / given))  # an exception here would fail the test
    assert code == 2 and not out, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err


def test_predict_without_a_reachable_registry_is_one_line(project, user_inputs):
    path, _ = project
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = subprocess.run(
        ["cifar-predict", "models:/cifar10@champion", str(user_inputs / "odd.png")],
        cwd=path,
        env=environment() | {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "cannot reach the MLflow tracking server" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


SERVE_LIMIT = 16  # CIFAR_SERVE_MAX_IMAGES for the served model: a refused batch stays small


@contextlib.contextmanager
def served(path: Path, model_uri: str):
    """`mlflow models serve` of `model_uri` on a free port, as the README starts it; yields its
    URL and the file its output goes to."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = environment() | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{path / 'mlflow.db'}",
        "CIFAR_SERVE_MAX_IMAGES": str(SERVE_LIMIT),
        "UVICORN_ACCESS_LOG": "false",
    }
    log = path / f"serve-{port}.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            ["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local", "-p", str(port)],
            cwd=path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                break
            except OSError:
                assert server.poll() is None, "mlflow models serve exited"
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/invocations", log
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def refusal(url: str, body: bytes) -> tuple[int, str]:
    """The HTTP status and message of a request the server must refuse."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    answer = refused.value.read().decode()
    try:
        return refused.value.code, json.loads(answer)["message"]
    except (ValueError, KeyError):
        return refused.value.code, answer


def served_predictions(url: str, images: np.ndarray) -> np.ndarray:
    """A request as the README's curl sends it."""
    body = json.dumps({"inputs": images.tolist()}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return np.asarray(json.loads(response.read())["predictions"])


REGISTERS = [f"register@{d}" for d in DATASETS]  # always_changed: they check the registry on every repro


def test_a_repro_puts_back_what_the_registry_lost_and_then_changes_nothing(project):
    path, _ = project
    lock = (path / "dvc.lock").read_text()
    records = {d: (path / f"registry/{d}.json").read_text() for d in DATASETS}
    r = registry(path)
    r.delete_registered_model_alias("cifar10", "champion")
    r.delete_registered_model("cifar100")
    output = run(path, "dvc", "repro").stdout
    assert stages_run(output) == REGISTERS
    assert "cifar10: repaired: no version of cifar10 held a confirmed champion" in output
    assert "cifar100: repaired: the registered model cifar100 was gone from the store; created it again" in output
    for d in DATASETS:
        assert str(r.get_model_version_by_alias(d, "champion").version) == "1"
        assert (path / f"registry/{d}.json").read_text() == records[d]
    assert (path / "dvc.lock").read_text() == lock
    again = run(path, "dvc", "repro").stdout
    assert stages_run(again) == REGISTERS and "repaired" not in again
    assert (path / "dvc.lock").read_text() == lock and len(r.search_model_versions("name = 'cifar10'")) == 1


def test_changing_epochs_reruns_only_train_and_evaluate(project):
    path, _ = project
    # One export format from here on: the first repro exported every one, and each later repro
    # of the shared project would pay for all of them again.
    edit_params(path, lambda p: (p["train"].update(epochs=3), p["export"].update(formats=["litert_int8"])))
    ran = stages_run(run(path, "dvc", "repro").stdout)
    assert sorted(ran) == sorted(
        f"{stage}@{d}" for stage in ("recipe", "train", "evaluate", "export", "register") for d in DATASETS
    )
    assert set(json.loads((path / "metrics/export/cifar10.json").read_text())) == {"keras", "litert_int8"}
    c = client(path)
    for found in runs_by_dataset(path).values():
        assert len(found) == 2
        assert [m.step for m in c.get_metric_history(found[-1].info.run_id, "val_loss")] == [1, 2, 3]
    # the second model is version 2; it takes champion exactly when it beats version 1 on the same test set
    r = registry(path)
    for d in DATASETS:
        v1, v2 = (r.get_model_version(d, str(n)) for n in (1, 2))
        assert v1.tags["test_set_digest"] == v2.tags["test_set_digest"]
        better = float(v2.tags["test_accuracy"]) >= float(v1.tags["test_accuracy"]) + 0.005 - 1e-9
        assert str(r.get_model_version_by_alias(d, "champion").version) == ("2" if better else "1")
        assert str(r.get_model_version_by_alias(d, "newest").version) == "2"
        assert json.loads((path / f"registry/{d}.json").read_text())["champion"] == better


def test_only_the_chosen_recipes_values_rerun_training_and_a_grid_is_one_queued_command(project):
    """The recipe stages resolve each dataset's train values; training depends on those only:
    editing another recipe, or naming the same values per dataset, reruns the recipe stages and
    no training; editing the chosen recipe puts both train stages out of date. Recipes x seeds
    is one `dvc exp run --queue` (queued here, not run)."""
    path, _ = project
    recipes_file, params_file = path / "recipes.yaml", path / "params.yaml"
    original, original_params = recipes_file.read_text(), params_file.read_text()
    recipes = yaml.safe_load(original)
    resolve = ("recipe@cifar10", "recipe@cifar100")
    try:
        recipes["fast"]["epochs"] += 1  # the test project's recipe is seed
        recipes_file.write_text(yaml.safe_dump(recipes))
        edit_params(path, lambda p: p.update(recipe={"cifar10": "seed", "cifar100": "seed"}))
        assert sorted(stages_run(run(path, "dvc", "repro").stdout)) == sorted([*resolve, *REGISTERS])
        recipes["seed"]["learning_rate"] /= 2
        recipes_file.write_text(yaml.safe_dump(recipes))
        run(path, "dvc", "repro", *resolve)
        status = json.loads(run(path, "dvc", "status", "--json").stdout)
        assert {f"train@{d}" for d in DATASETS} <= set(status)
        assert "evaluate@cifar10" not in status  # it reads the model, not the params
    finally:
        recipes_file.write_text(original)
        params_file.write_text(original_params)
        run(path, "dvc", "repro", *resolve)  # the files the trained models were trained with, again
    run(path, "git", "add", "-A")
    run(path, "git", "commit", "-qm", "state before the grid")
    grid = ("-S", "recipe=seed,fast", "-S", "train.seed=1,2")
    run(path, "dvc", "exp", "run", "--queue", *grid, "register@cifar10")
    try:
        queued = [line for line in run(path, "dvc", "queue", "status").stdout.splitlines() if "Queued" in line]
        assert len(queued) == 4, queued
    finally:
        run(path, "dvc", "queue", "remove", "--queued")


def test_a_new_url_for_the_same_archive_reruns_only_its_download(project, archives):
    path, _ = project
    edit_params(path, lambda p: p["data"]["cifar10"].update(url=archives["cifar10"][0].as_uri()))
    assert sorted(stages_run(run(path, "dvc", "repro").stdout)) == sorted(["download@cifar10", *REGISTERS])


def test_a_split_param_reruns_split_onwards_for_every_dataset(project):
    path, _ = project
    r = registry(path)
    names = {d: json.loads((path / f"registry/{d}.json").read_text())["registered_model"] for d in DATASETS}
    champions = {d: str(r.get_model_version_by_alias(names[d], "champion").version) for d in DATASETS}
    # A smaller test set: the champion is scored on the new model's 20 test images, and the two
    # compared there, by the numbers the store holds for both on those images.
    edit_params(path, lambda p: p["split"].update(seed=43, max_test_images=20))
    output = run(path, "dvc", "repro").stdout
    expected = [
        f"{stage}@{d}" for stage in ("split", "normalize", "train", "evaluate", "export", "register") for d in DATASETS
    ]
    assert sorted(stages_run(output)) == sorted(expected)
    for d in DATASETS:
        record = json.loads((path / f"registry/{d}.json").read_text())
        old = r.get_model_version(names[d], champions[d])
        [scored] = [
            m
            for m in mlflow.get_logged_model(old.model_id or old.source.removeprefix("models:/")).metrics
            if m.key == "test_accuracy" and m.dataset_digest == record["test_set_digest"]
        ]
        assert f"{d}: scored v{champions[d]} on these 20 test images" in output
        better = record["test_accuracy"] >= scored.value + 0.005 - 1e-9
        holder = str(r.get_model_version_by_alias(names[d], "champion").version)
        assert record["champion"] == better and holder == (str(record["version"]) if better else champions[d])
        decision = r.get_model_version(names[d], str(record["version"])).tags["champion_decision"]
        assert f"champion v{champions[d]}'s {scored.value:.4f} +0.005 on the same 20 test images" in decision
        assert str(r.get_model_version_by_alias(names[d], "newest").version) == str(record["version"])


def test_a_datasets_own_params_rerun_only_that_datasets_stages(project, tmp_path):
    """`data.<d>.*` belongs to one dataset: CIFAR-100's label set reruns its stages from split on,
    another CIFAR-10 archive every CIFAR-10 stage, and neither edit reruns anything of the other
    dataset (both in one repro: the two sets of stages are disjoint, so each rule is checked whole)."""
    path, _ = project
    other = tmp_path / "cifar-10-binary.tar.gz"
    md5 = build_archive(other, "cifar10", train_per_file=60, test=60, seed=1)

    def edit(p: dict) -> None:
        p["data"]["cifar10"].update(url=str(other), md5=md5)
        p["data"]["cifar100"].update(label_mode="coarse")

    edit_params(path, edit)
    ran = stages_run(run(path, "dvc", "repro").stdout)
    stages = ("download", "split", "normalize", "train", "evaluate", "export", "register")
    assert sorted(ran) == sorted([*(f"{s}@cifar10" for s in stages), *(f"{s}@cifar100" for s in stages[1:])])
    latest = runs_by_dataset(path)["cifar100"][-1]
    assert latest.data.params["num_classes"] == "20"
    assert json.loads((path / "data/split/cifar100/classes.json").read_text())["label_mode"] == "coarse"
    # another label set is another registered model: its versions never compete with the fine ones
    assert json.loads((path / "registry/cifar100.json").read_text())["registered_model"] == "cifar100-coarse"


def test_editing_a_module_reruns_exactly_the_stages_that_import_it(project):
    """The split module: its stage reruns for both datasets, writes the same split, and nothing
    downstream reruns (the registers run on every repro). Cheap on purpose: no TensorFlow stage."""
    path, _ = project
    with open(path / "src/cifar_pipeline/data/split.py", "a") as module:
        module.write("# an edit\n")
    assert sorted(stages_run(run(path, "dvc", "repro").stdout)) == sorted([f"split@{d}" for d in DATASETS] + REGISTERS)


def new_cifar10_runs(path: Path, before: set[str]) -> list:
    return [r for r in runs_by_dataset(path)["cifar10"] if r.info.run_id not in before]


def test_training_killed_mid_way_resumes_the_same_run(project):
    """SIGKILL (no chance to clean up) during training; the next repro continues that MLflow run."""
    path, _ = project
    epochs = 6  # a value no earlier run had: a new run, which the kill interrupts after 2 epochs
    edit_params(path, lambda p: p["train"].update(epochs=epochs))
    before = {r.info.run_id for r in runs_by_dataset(path)["cifar10"]}
    proc = start_training(path, 2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted = new_cifar10_runs(path, before)
    assert len(interrupted) == 1 and interrupted[0].info.status == "RUNNING"  # SIGKILL leaves no chance to end it

    output = run(path, "dvc", "repro", "train@cifar10").stdout
    assert "resuming MLflow run" in output
    after = new_cifar10_runs(path, before)
    assert [r.info.run_id for r in after] == [interrupted[0].info.run_id]
    assert after[0].info.status == "FINISHED"
    c = client(path)
    for key in PER_EPOCH:
        assert [m.step for m in c.get_metric_history(after[0].info.run_id, key)] == list(range(1, epochs + 1)), key
    assert len((path / "plots/loss/cifar10.csv").read_text().splitlines()) == epochs + 1
    assert not list((path / "data/.checkpoints").glob("cifar10-*"))


def test_ctrl_c_ends_the_run_killed_and_leaves_the_stage_rerunnable(project):
    """Ctrl-C in a terminal sends SIGINT to the whole foreground group: dvc and the stage."""
    path, _ = project
    epochs = 5  # a new run again
    edit_params(path, lambda p: p["train"].update(epochs=epochs))
    before = {r.info.run_id for r in runs_by_dataset(path)["cifar10"]}
    proc = start_training(path, 1)
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "error: interrupted; this stage left no output" in output
    killed = new_cifar10_runs(path, before)
    assert len(killed) == 1 and killed[0].info.status == "KILLED"
    assert not (path / "models/cifar10").exists()

    run(path, "dvc", "repro", "train@cifar10")
    finished = new_cifar10_runs(path, before)
    assert [r.info.run_id for r in finished] == [killed[0].info.run_id] and finished[0].info.status == "FINISHED"
    assert len(client(path).get_metric_history(finished[0].info.run_id, "loss")) == epochs


def test_two_queued_experiments_run_in_parallel_into_the_project_store(project):
    path, _ = project
    run(path, "git", "add", "-A")
    run(path, "git", "commit", "-qm", "state after edits")
    names = ("queued-a", "queued-b")
    for seed, name in enumerate(names, start=7):
        command = ("dvc", "exp", "run", "--queue", "-S", f"train.seed={seed}", "-S", "train.epochs=1", "--name", name)
        run(path, *command, "register@cifar10")  # one dataset: what is queued does not depend on it
    run_queue(path, names)
    found = runs_by_dataset(path)
    assert not [r for r in found["cifar100"] if r.data.tags.get("dvc_experiment") in names]
    d = "cifar10"
    for name in names:
        queued = [r for r in found[d] if r.data.tags.get("dvc_experiment") == name]
        assert len(queued) == 1, (d, name)
        r = queued[0]
        assert r.info.run_name == f"{d}-{name}" and r.info.status == "FINISHED"
        assert set(TEST_METRICS) <= set(r.data.metrics)
        assert len(client(path).get_metric_history(r.info.run_id, "loss")) == 1
        # artifacts live under the project root, not in the deleted temporary copy
        assert r.info.artifact_uri.startswith(((path / "mlruns").as_uri(), str(path / "mlruns")))


# The fast recipe by name, at test size: its network with every trick on, test-time views that shift
# and mirror; the test project's own train keys (epochs, batch size) override the recipe's.
FAST_NETWORK = [
    "recipe=fast",
    "train.epochs=2",  # whatever the project's are by now
    "train.model.widths=[4,8,8]",
    "train.model.test_views=flip_translate",
    "train.ema_momentum=0.9",
]


def test_the_fast_network_is_registered_predicted_and_served_with_its_registered_accuracy(
    project, user_inputs, predict_here
):
    """`dvc exp run -S recipe=fast ...` through the same stages, for CIFAR-100 (the stages
    share every line between the datasets): the test accuracy that
    register records is what the logged model, `cifar-predict` and `mlflow models serve` deliver,
    test-time views included."""
    path, _ = project
    overrides = (arg for o in FAST_NETWORK for arg in ("-S", o))
    output = run(path, "dvc", "exp", "run", *overrides, "register@cifar100").stdout
    assert {f"{s}@cifar100" for s in ("train", "evaluate", "register")} <= set(stages_run(output))
    c = client(path)
    d = "cifar100"
    record = json.loads((path / f"registry/{d}.json").read_text())
    version = c.get_model_version(record["registered_model"], str(record["version"]))
    run_data = c.get_run(version.run_id).data
    assert run_data.params["train.model.kind"] == "airbench" and run_data.params["train.ema_momentum"] == "0.9"
    assert run_data.params["recipe"] == "fast" and "train.model.widths" in run_data.params["recipe.overrides"]
    # resolved values: the recipe's optimizer, the project's own batch size over the recipe's
    assert run_data.params["train.optimizer"] == "sgd" and run_data.params["train.batch_size"] == "32"
    assert "train.batch_size" in run_data.params["recipe.overrides"].split(", ")
    registered = float(version.tags["test_accuracy"])
    assert registered == pytest.approx(json.loads((path / f"metrics/{d}.json").read_text())["test_accuracy"])
    images = np.load(path / f"data/split/{d}/test_images.npy")
    labels = np.load(path / f"data/split/{d}/test_labels.npy")
    uri = f"models:/{record['registered_model']}/{record['version']}"
    pyfunc = np.asarray(mlflow.pyfunc.load_model(uri).predict(images))
    assert float(np.mean(pyfunc.argmax(axis=1) == labels)) == pytest.approx(registered)
    model = keras.models.load_model(path / f"models/{d}/model.keras")
    assert model.layers[-1].name == "mean_over_views"  # the saved, logged and served graph averages 6 views
    np.testing.assert_allclose(pyfunc, model.predict(images, verbose=0), atol=1e-5)
    np.save(user_inputs / f"{d}-test.npy", images)
    code, printed, _ = predict_here(uri, str(user_inputs / f"{d}-test.npy"), "--format", "json")
    assert code == 0
    out = json.loads(printed)
    top1 = np.array([row["top5"][0]["class"] for row in out])
    names = np.array(json.loads((path / f"models/{d}/classes.json").read_text())["names"])
    assert float(np.mean(top1 == names[labels])) == pytest.approx(registered)
    # The README's `mlflow models serve` line, by alias, and a request as the README's curl sends it.
    with served(path, f"models:/{record['registered_model']}@newest") as (url, log):
        np.testing.assert_allclose(served_predictions(url, images[:4]), pyfunc[:4], atol=1e-5)
        one = images[:1].astype(np.int64)
        hostile = {
            "wrong shape": (json.dumps({"inputs": np.zeros((1, 28, 28), np.uint8).tolist()}), "shaped (N, 32, 32, 3)"),
            "0-1 floats": (json.dumps({"inputs": (one / 255).tolist()}), "whole numbers 0-255"),
            "above 255": (json.dumps({"inputs": (one + 255).tolist()}), "pixels must be 0-255"),
            "too many": (json.dumps({"inputs": images[: SERVE_LIMIT + 1].tolist()}), f"at most {SERVE_LIMIT} images"),
            "broken JSON": ('{"inputs": [[[[1, 2', None),
            "empty body": ("", None),
        }
        for what, (body, reason) in hostile.items():
            code, message = refusal(url, body.encode())
            assert code == 400, (what, code, message)
            assert reason is None or (reason in message and "\n" not in message.strip()), (what, message)
        np.testing.assert_allclose(served_predictions(url, images[:4]), pyfunc[:4], atol=1e-5)  # still right
    output = log.read_text()
    assert "/invocations" not in output and "━" not in output and "step" not in output, output[-2000:]

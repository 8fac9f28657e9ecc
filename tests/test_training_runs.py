"""The train stage's run lifecycle, in-process on tiny arrays: divergence, Ctrl-C, resume.

Each test works in its own folder with its own SQLite store (MLFLOW_TRACKING_URI), so
the checkpoints (relative to the working folder) and runs never mix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import keras
import mlflow
import numpy as np
import psutil
import pytest
import tensorflow as tf
from mlflow.tracking import MlflowClient

from cifar_pipeline.core import interrupts, stage_runner
from cifar_pipeline.core.errors import PipelineError
from cifar_pipeline.core.files import write_json
from cifar_pipeline.core.layout import MODEL_FILE, Classes, Part, Split, load_images, write_split
from cifar_pipeline.core.params import Params
from cifar_pipeline.data.channel_stats import ChannelStats
from cifar_pipeline.tracking import orphans
from cifar_pipeline.training import final_model, trainer
from cifar_pipeline.training.callbacks import TrainingDiverged
from cifar_pipeline.training.checkpoint import CHECKPOINT_ROOT
from cifar_pipeline.training.input_pipeline import steps_per_epoch
from cifar_pipeline.training.model import patch_whitening
from cifar_pipeline.training.recipe import learning_rate_schedule
from cifar_pipeline.training.trainer import train
from testkit.project import seed_params

EPOCHS = 4


@pytest.fixture(autouse=True)
def float32_afterwards():
    """train() sets Keras's global dtype policy (bfloat16 under `auto` on some CPUs); keep it
    from leaking into the tests that run after this module's."""
    yield
    keras.mixed_precision.set_global_policy("float32")


@dataclasses.dataclass(frozen=True)
class Workspace:
    """What a train stage run needs: tiny params, a split folder, channel statistics, and the
    folder (the current one, holding mlflow.db) its outputs go to."""

    params: Params
    split: Path
    stats: Path
    root: Path


@pytest.fixture
def setup(tmp_path, monkeypatch) -> Workspace:
    return workspace(tmp_path, monkeypatch)


def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """Tiny params, split and statistics in `tmp_path`, made the working folder with its own store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    rng = np.random.default_rng(0)
    split, stats = tmp_path / "split", tmp_path / "stats.json"
    split.mkdir()
    labels = np.arange(80, dtype=np.int32) % 10
    images = rng.integers(0, 256, (80, 32, 32, 3), dtype=np.uint8)
    parts = [Part(images[a:b], labels[a:b], np.arange(a, b)) for a, b in ((0, 64), (64, 80))]
    test = Part(images[:20], labels[:20], np.arange(20))
    write_split(split, Split(*parts, test, Classes([str(i) for i in range(10)], "label")))
    write_json(stats, {"mean": [120.0] * 3, "std": [60.0] * 3})
    params = seed_params()
    tiny = dataclasses.replace(params.train.model, filters=(4,), dropouts=(0.1,), dense_units=8)
    params = dataclasses.replace(
        params, train=dataclasses.replace(params.train, epochs=EPOCHS, batch_size=16, model=tiny)
    )
    return Workspace(params, split, stats, tmp_path)


def run_train(setup: Workspace):
    models, loss, accuracy = setup.root / "models", setup.root / "loss.csv", setup.root / "accuracy.csv"
    return train("cifar10", setup.params, setup.split, setup.stats, models, loss, accuracy)


def only_run(tmp):
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cifar").experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def steps(client, run_id, key="loss"):
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_a_finished_run_leaves_no_checkpoint(setup):
    run_id = run_train(setup)
    client, run = only_run(setup.root)
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert steps(client, run_id) == [1, 2, 3, 4]
    assert not any(CHECKPOINT_ROOT.glob("*/state.json"))


def test_non_finite_loss_fails_the_run_with_the_reason_and_writes_nothing(setup, monkeypatch):
    tmp = setup.root
    real_build = trainer.build_classifier

    def diverging(model_params, num_classes, stats):  # the classifier, with outputs that have blown up
        inner = real_build(model_params, num_classes, stats)
        inputs = keras.Input(inner.input_shape[1:])
        blown_up = keras.layers.Lambda(lambda p: p * float("nan"), dtype="float32")  # float32, as the real head
        return keras.Model(inputs, blown_up(inner(inputs)))

    monkeypatch.setattr(trainer, "build_classifier", diverging)
    with pytest.raises(TrainingDiverged, match="loss is nan"):
        run_train(setup)
    _client, run = only_run(tmp)
    assert run.info.status == "FAILED"
    assert "training diverged" in run.data.tags["failure"]
    assert not (tmp / "models").exists() and not (tmp / "loss.csv").exists() and not (tmp / "accuracy.csv").exists()


def test_a_full_artifact_store_is_named_the_run_failed_and_the_rerun_finishes(setup, full_disk):
    """MLflow's local store copies artifacts from a temporary file: the error named that file."""
    tmp = setup.root
    (tmp / "mlruns").symlink_to(full_disk, target_is_directory=True)  # MLflow's default artifact root here
    with pytest.raises(OSError) as caught:
        run_train(setup)
    line = stage_runner.file_system_problem(caught.value)
    assert f"writing {tmp / 'mlruns'}/" in line and "it is MLflow's artifact store" in line, line
    _client, run = only_run(tmp)
    assert run.info.status == "FAILED" and "No space left" in run.data.tags["failure"]
    assert not (tmp / "models").exists() and not (tmp / "loss.csv").exists()
    (full_disk / "filler").unlink()
    run_train(setup)
    _client, run = only_run(tmp)
    assert run.info.status == "FINISHED" and (tmp / "models" / MODEL_FILE).is_file()


@pytest.mark.parametrize("place", ["models", "checkpoints", "temp"])
def test_a_full_disk_in_each_place_training_writes_is_named_and_the_rerun_finishes(
    setup, full_disk, monkeypatch, place
):
    params, split, stats, tmp = setup.params, setup.split, setup.stats, setup.root
    models = full_disk / "models" if place == "models" else tmp / "models"
    if place == "checkpoints":
        (tmp / "data").symlink_to(full_disk, target_is_directory=True)  # data/.checkpoints/ is there
    if place == "temp":
        monkeypatch.setattr(tempfile, "tempdir", str(full_disk))

    def train_here():
        return train("cifar10", params, split, stats, models, tmp / "loss.csv", tmp / "accuracy.csv")

    with pytest.raises(OSError) as caught:
        train_here()
    line = stage_runner.file_system_problem(caught.value)
    named = {
        "models": f"writing {models}",
        "checkpoints": "writing data/.checkpoints/",
        "temp": f"writing {full_disk}",
    }
    assert line.startswith("no space left on the device") and named[place] in line, line
    assert place != "temp" or "it is the system temp folder: free space there, or set TMPDIR" in line
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cifar").experiment_id
    # Outputs are written after the run ends: a full models/ leaves a FINISHED run, which the
    # rerun resumes (its checkpoint stays) to write them; elsewhere the run ends FAILED.
    [failed] = client.search_runs([experiment])
    assert failed.info.status == ("FINISHED" if place == "models" else "FAILED") and not models.exists()
    (full_disk / "filler").unlink()
    train_here()
    runs = client.search_runs([experiment])
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == [] and (models / MODEL_FILE).is_file()
    assert place != "models" or [r.info.run_id for r in runs] == [failed.info.run_id]


def test_a_store_on_a_full_disk_is_named_as_such(setup, full_disk, monkeypatch):
    """SQLite's "database or disk is full" was reported as "not an MLflow database: move the file away"."""
    store = full_disk / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    with pytest.raises(PipelineError) as caught:
        run_train(setup)
    assert str(caught.value).startswith(f"the MLflow store sqlite:///{store} (from MLFLOW_TRACKING_URI) cannot be ")
    assert "the disk that holds it is full: free space there" in str(caught.value)
    assert not (setup.root / "models").exists()


@pytest.fixture
def deterministic(setup):
    """`train.deterministic: true`; op determinism is process-wide, so it is switched off after."""
    train = dataclasses.replace(setup.params.train, deterministic=True)
    yield dataclasses.replace(setup, params=dataclasses.replace(setup.params, train=train))
    from tensorflow.python.framework import config

    config.disable_op_determinism()


def _op_determinism_enabled() -> bool:
    from tensorflow.python.framework import config

    return config.is_op_determinism_enabled()


def test_deterministic_training_gives_the_same_weights_twice_and_says_so(deterministic):
    weights = []
    for _ in range(2):
        run_id = run_train(deterministic)
        weights.append(keras.models.load_model(deterministic.root / "models" / MODEL_FILE).get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*weights, strict=True))
    assert _op_determinism_enabled()
    logged = MlflowClient(f"sqlite:///{deterministic.root / 'mlflow.db'}").get_run(run_id).data.params
    assert logged["train.deterministic"] == "True" and logged["resolved.dtype_policy"] == "float32"


def test_a_training_start_ends_runs_whose_process_is_gone_and_leaves_live_ones(setup):
    """A killed `dvc queue` worker's run has no checkpoint to resume (DVC deletes its copy):
    without this it stayed RUNNING for ever."""
    tmp = setup.root
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.create_experiment("cifar", artifact_location=(tmp / "mlruns").as_uri())
    dead = subprocess.Popen(["sleep", "30"])
    gone = f"{socket.gethostname()}:{dead.pid}:{psutil.Process(dead.pid).create_time():.2f}"
    dead.kill()
    dead.wait()
    owners = {"gone": gone, "alive": orphans.this_process(), "elsewhere": "other-host:1:1.00"}
    ids = {name: client.create_run(experiment, tags={orphans.OWNER_TAG: o}).info.run_id for name, o in owners.items()}
    trained = run_train(setup)
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {"gone": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING"}
    assert client.get_run(ids["gone"]).data.tags["failure"] == orphans.REASON
    assert client.get_run(trained).data.tags[orphans.OWNER_TAG] == orphans.this_process()


@dataclasses.dataclass(frozen=True)
class Resumed:
    """A training run Ctrl-C'ed in its third epoch, then run again to the end."""

    setup: Workspace
    killed: object  # the MLflow run right after Ctrl-C
    killed_steps: list[int]
    state: dict  # the checkpoint's state.json after Ctrl-C
    run_id: str  # what the second train() returned
    client: MlflowClient
    finished: object  # the same run at the end
    checkpoints_left: list[Path]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> Resumed:
    """Shared by the tests of one interrupted-and-resumed run: training it twice is the cost."""
    tmp = tmp_path_factory.mktemp("resumed")
    with pytest.MonkeyPatch.context() as monkeypatch:
        setup = workspace(tmp, monkeypatch)
        original = trainer.EpochLogger.on_epoch_end

        def interrupt_at_epoch_3(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt
            original(self, epoch, logs)

        monkeypatch.setattr(trainer.EpochLogger, "on_epoch_end", interrupt_at_epoch_3)
        with pytest.raises(KeyboardInterrupt):
            run_train(setup)
        client, killed = only_run(tmp)
        killed_steps = steps(client, killed.info.run_id)
        state = json.loads(next(CHECKPOINT_ROOT.glob("cifar10-*/state.json")).read_text())
        monkeypatch.setattr(trainer.EpochLogger, "on_epoch_end", original)
        run_id = run_train(setup)
        client, finished = only_run(tmp)
        left = list(CHECKPOINT_ROOT.glob("*/state.json"))
        keras.mixed_precision.set_global_policy("float32")
    return Resumed(setup, killed, killed_steps, state, run_id, client, finished, left)


def test_ctrl_c_marks_the_run_killed_and_keeps_its_last_checkpoint(resumed):
    assert resumed.killed.info.status == "KILLED"
    assert resumed.killed_steps == [1, 2]
    assert resumed.state["epochs_done"] == 2 and resumed.state["run_id"] == resumed.killed.info.run_id


def test_the_next_run_continues_the_killed_run_to_the_end(resumed):
    run = resumed.finished
    assert resumed.run_id == run.info.run_id == resumed.killed.info.run_id
    assert run.info.status == "FINISHED" and run.data.tags["resumed_after_epoch"] == "2"
    for key in ("loss", "val_accuracy", "learning_rate", "epoch_time_s"):
        assert steps(resumed.client, run.info.run_id, key) == [1, 2, 3, 4], key
    assert not resumed.checkpoints_left


def test_a_resumed_run_continues_the_learning_rate_schedule_where_it_stopped(resumed):
    """The schedule lives in the optimizer's saved step count: the resumed epochs continue the
    warm-up + cosine where it stopped instead of warming up again."""
    params = resumed.setup.params
    per_epoch = steps_per_epoch(64, params.train.batch_size)
    schedule = learning_rate_schedule(params.train.learning_rate, params.train.lr_schedule, per_epoch, EPOCHS)
    expected = [float(keras.ops.convert_to_numpy(schedule(e * per_epoch - 1))) for e in range(1, EPOCHS + 1)]
    logged = [m.value for m in resumed.client.get_metric_history(resumed.run_id, "learning_rate")]
    assert logged == pytest.approx(expected, rel=1e-5)


def test_a_resumed_run_has_every_recipe_knob_and_plot_rows_for_every_epoch(resumed):
    """Every recipe knob is on the run, under dataset-neutral keys; the plot CSVs hold each epoch once."""
    params = resumed.finished.data.params
    assert params["train.optimizer"] == "adam"
    assert params["train.lr_schedule.kind"] == "cosine"
    assert params["train.lr_schedule.warmup_fraction"] == "0.15"
    assert params["train.label_smoothing"] == "0.0" and params["train.weight_decay"] == "0.0"
    root = resumed.setup.root
    loss, accuracy = ((root / f"{name}.csv").read_text().splitlines() for name in ("loss", "accuracy"))
    assert loss[0] == "epoch,loss,val_loss" and len(loss) == 1 + EPOCHS
    assert accuracy[0] == "epoch,accuracy,val_accuracy,top5_accuracy,val_top5_accuracy" and len(accuracy) == 1 + EPOCHS


def test_a_kill_between_checkpoint_and_log_is_filled_in_on_resume(setup, monkeypatch):
    tmp = setup.root
    real_log = mlflow.log_metrics

    def die_on_step_2(metrics, step=None, **kwargs):
        if step == 2:
            raise KeyboardInterrupt  # the checkpoint of epoch 2 is committed, its metrics never logged
        return real_log(metrics, step=step, **kwargs)

    monkeypatch.setattr(trainer.mlflow, "log_metrics", die_on_step_2)
    with pytest.raises(KeyboardInterrupt):
        run_train(setup)
    monkeypatch.setattr(trainer.mlflow, "log_metrics", real_log)
    run_train(setup)
    client, run = only_run(tmp)
    assert steps(client, run.info.run_id) == [1, 2, 3, 4]


def test_a_changed_param_starts_a_new_run_instead_of_resuming(setup, monkeypatch):
    params, split, stats, tmp = setup.params, setup.split, setup.stats, setup.root
    original = trainer.EpochLogger.on_epoch_end

    def interrupt(self, epoch, logs=None):
        original(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.EpochLogger, "on_epoch_end", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_train(setup)
    monkeypatch.setattr(trainer.EpochLogger, "on_epoch_end", original)
    changed = dataclasses.replace(params, train=dataclasses.replace(params.train, seed=params.train.seed + 1))
    train("cifar10", changed, split, stats, tmp / "models", tmp / "loss.csv", tmp / "accuracy.csv")
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cifar").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
    finished = next(r for r in runs if r.info.status == "FINISHED")
    assert steps(client, finished.info.run_id) == [1, 2, 3, 4]
    assert list(CHECKPOINT_ROOT.glob("cifar10-*")) == []


@pytest.mark.parametrize(("setting", "policy"), [(False, "float32"), (True, "mixed_bfloat16")])
def test_both_cpu_precisions_train_and_export_a_float32_model(setup, setting, policy):
    """`auto` picks either one depending on the CPU, so both paths must work on any machine."""
    params, split, stats, tmp = setup.params, setup.split, setup.stats, setup.root
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, mixed_precision=setting))
    run_id = train("cifar10", params, split, stats, tmp / "models", tmp / "loss.csv", tmp / "accuracy.csv")
    client, run = only_run(tmp)
    assert run.info.status == "FINISHED" and run.data.params["resolved.dtype_policy"] == policy
    assert steps(client, run_id) == [1, 2, 3, 4]
    keras.mixed_precision.set_global_policy("float32")
    model = keras.saving.load_model(tmp / "models" / MODEL_FILE)
    probabilities = np.asarray(model.predict(np.zeros((3, 32, 32, 3), np.uint8), verbose=0))
    assert probabilities.dtype == np.float32 and np.allclose(probabilities.sum(axis=1), 1, atol=1e-3)


def interrupt_after_epoch(setup, monkeypatch, epoch: int) -> None:
    """Run training and Ctrl-C it once `epoch` is committed (checkpointed and logged)."""
    original = trainer.EpochLogger.on_epoch_end

    def interrupt(self, index, logs=None):
        original(self, index, logs)
        if index + 1 == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer.EpochLogger, "on_epoch_end", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_train(setup)
    monkeypatch.setattr(trainer.EpochLogger, "on_epoch_end", original)


def all_runs(tmp):
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    return client, client.search_runs([client.get_experiment_by_name("cifar").experiment_id])


def test_an_unreadable_checkpoint_state_is_discarded_and_training_starts_over(setup, monkeypatch, capsys):
    tmp = setup.root
    interrupt_after_epoch(setup, monkeypatch, 2)
    [state] = CHECKPOINT_ROOT.glob("cifar10-*/state.json")
    state.write_text("")  # a crash of an older version between truncate and write
    run_train(setup)
    err = capsys.readouterr().err
    assert "checkpoint state" in err and "is unreadable" in err and "training from scratch" in err
    client, runs = all_runs(tmp)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 1 and steps(client, finished[0].info.run_id) == [1, 2, 3, 4]
    assert not list(CHECKPOINT_ROOT.glob("cifar10-*"))


def test_a_corrupt_checkpoint_model_ends_its_run_failed_and_a_new_run_trains(setup, monkeypatch, capsys):
    tmp = setup.root
    interrupt_after_epoch(setup, monkeypatch, 2)
    [model_file] = CHECKPOINT_ROOT.glob("cifar10-*/epoch-0002.keras")
    model_file.write_bytes(b"not a zip file")
    run_train(setup)
    err = capsys.readouterr().err
    assert "epoch-0002.keras (epoch 2) cannot be loaded" in err and "training from scratch" in err
    client, runs = all_runs(tmp)
    by_status = {r.info.status: r for r in runs}
    assert sorted(by_status) == ["FAILED", "FINISHED"]
    assert "cannot be loaded" in by_status["FAILED"].data.tags["failure"]
    assert steps(client, by_status["FINISHED"].info.run_id) == [1, 2, 3, 4]


def test_evaluating_the_same_model_again_logs_its_test_metrics_once(setup):
    """A SIGKILL during evaluate reruns it on the next `dvc repro`: no duplicate history."""
    from cifar_pipeline.inference.evaluation import evaluate_model

    split, tmp = setup.split, setup.root
    run_id = run_train(setup)
    for _ in range(2):
        evaluate_model("cifar10", split, tmp / "models", tmp / "m.json", tmp / "c.csv", tmp / "p.csv")
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    assert len(client.get_metric_history(run_id, "test_accuracy")) == 1
    assert (tmp / "p.csv").read_text().splitlines()[0] == "class,accuracy,test_images"


def test_a_swallowed_ctrl_c_still_stops_training_at_the_next_batch(setup, monkeypatch):
    """The handler's KeyboardInterrupt can land where it is swallowed ("Exception ignored in"
    a destructor); the recorded signal stops training all the same, and the run ends KILLED."""
    original = trainer.EpochLogger.on_epoch_end

    def signal_lands_in_a_destructor(self, index, logs=None):
        original(self, index, logs)
        if index == 0:
            with contextlib.suppress(KeyboardInterrupt):
                interrupts._interrupt(signal.SIGINT, None)

    monkeypatch.setattr(trainer.EpochLogger, "on_epoch_end", signal_lands_in_a_destructor)
    monkeypatch.setattr(interrupts, "_interrupted", False)
    with pytest.raises(KeyboardInterrupt):
        run_train(setup)
    client, run = only_run(setup.root)
    assert run.info.status == "KILLED"
    assert steps(client, run.info.run_id) == [1]  # stopped in epoch 2, before it was committed


def test_refreshed_batchnorm_statistics_are_the_mean_over_the_batches():
    inputs = keras.Input((2,))
    norm = keras.layers.BatchNormalization(momentum=0.99)
    model = keras.Model(inputs, norm(inputs))
    batches = [np.array([[0.0, 1.0], [2.0, 3.0]], np.float32), np.array([[4.0, 5.0], [6.0, 9.0]], np.float32)]
    data = tf.data.Dataset.from_tensor_slices((np.stack(batches), np.zeros((2, 2), np.int32)))
    final_model.refresh_batchnorm_statistics(model, data, count=2)
    np.testing.assert_allclose(norm.moving_mean.numpy(), np.mean([b.mean(axis=0) for b in batches], axis=0))
    np.testing.assert_allclose(norm.moving_variance.numpy(), np.mean([b.var(axis=0) for b in batches], axis=0))
    assert norm.momentum == 0.99  # the layer's own momentum is put back


def test_the_fast_network_trains_and_exports_its_views_and_whitening(setup):
    """airbench with weight averaging and flip views: model.keras is the graph evaluate and serving run."""
    params, split, stats, tmp = setup.params, setup.split, setup.stats, setup.root
    fast = dataclasses.replace(
        params.train.model, kind="airbench", widths=(4, 8, 8), bn_momentum=0.6, bn_scale=False, test_views="flip"
    )
    train_settings = dataclasses.replace(params.train, epochs=2, model=fast, ema_momentum=0.9, optimizer="sgd")
    run_train(dataclasses.replace(setup, params=dataclasses.replace(params, train=train_settings)))
    model = keras.models.load_model(tmp / "models" / MODEL_FILE)
    classifier = model.get_layer("cifar_model")
    assert [layer.name for layer in model.layers][-1] == "mean_over_views"
    images = np.asarray(load_images(split, "train"))
    expected = patch_whitening(images, ChannelStats.read(stats))
    np.testing.assert_array_equal(classifier.get_layer("whiten").get_weights()[0], expected)
    sample = images[:4]
    views = np.mean([classifier.predict(v, verbose=0) for v in (sample, sample[:, :, ::-1])], axis=0)
    np.testing.assert_allclose(model.predict(sample, verbose=0), views, rtol=1e-5, atol=1e-6)

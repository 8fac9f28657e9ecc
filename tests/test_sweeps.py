"""`cifar-sweep`: sweeps.yaml checked before any training; workers sharing one study in a real
PostgreSQL, one of them killed mid-trial; each trial a DVC experiment and an MLflow child run;
a pruned trial marked pruned and leaving nothing behind; `--best` as `-S` lines and a recipe."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from cifar_pipeline.core.recipes import read_recipes
from cifar_pipeline.core.yaml_reader import read_yaml
from cifar_pipeline.sweep.spec import SweepError, parse_sweep
from team_servers import Postgres
from testkit.project import ROOT, create, edit_params, environment, run

RAW = read_yaml((ROOT / "params.yaml").read_text())
RECIPES = read_recipes(ROOT / "recipes.yaml")
GOOD = {
    "dataset": "cifar100",
    "metric": "val_accuracy",
    "trials": 4,
    "space": {"train.label_smoothing": {"low": 0.0, "high": 0.3}},
}


def test_the_projects_sweeps_are_valid():
    for name, raw in read_yaml((ROOT / "sweeps.yaml").read_text()).items():
        parse_sweep(name, raw, RAW, RECIPES)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"space": {"train.label_smoothin": {"low": 0, "high": 0.1}}}, r"train.label_smoothin is not a key of params"),
        ({"space": {"split.seed": {"low": 1, "high": 3}}}, r"split.seed cannot vary in a sweep: only train\.\*"),
        ({"space": {"train.label_smoothing": {"low": 0.3, "high": 0.3}}}, r"the range 0.3..0.3 is empty"),
        ({"space": {"train.model.widths": {"choices": []}}}, r"choices must be a non-empty list"),
        (
            {"space": {"train.model.widths": {"choices": [[64, 256, 256], "wide"]}}},
            r"= 'wide' is not a valid value: train.model.widths must be a non-empty list of integers, got 'wide'",
        ),
        ({"space": {"train.epochs": {"low": 2.5, "high": 8}}}, r"train.epochs is a whole number"),
        ({"space": {"train.label_smoothing": {"low": 0.0, "high": 1.5}}}, r"= 1.5 is not a valid value"),
        ({"space": {"train.learning_rate": {"low": 0, "high": 1, "log": True}}}, r"a log range needs low > 0"),
        ({"space": {"train.optimizer": {"low": 0, "high": 1}}}, r"takes 'sgd', not a number: give it choices"),
        ({"metric": "test_accuracy"}, r"metric 'test_accuracy' is not one of"),
        ({"trials": 0}, r"trials must be a positive integer"),
        ({"dataset": "cifar1000"}, r"dataset 'cifar1000' is not one of"),
        ({"prune": {"after": 2}}, r"prune must be false or a mapping"),
    ],
)
def test_a_bad_sweep_is_one_line_naming_the_key(change, message):
    with pytest.raises(SweepError, match=message):
        parse_sweep("s", GOOD | change, RAW, RECIPES)


def test_a_sweep_of_an_unlisted_dataset_is_refused():
    with pytest.raises(SweepError, match=r"dataset cifar100 is not in params.yaml's datasets \['cifar10'\]"):
        parse_sweep("s", GOOD, RAW | {"datasets": ["cifar10"]}, RECIPES)


def sweep_command(path: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return run(path, "cifar-sweep", *args, **kwargs)


SWEEP = {
    "dataset": "cifar10",
    "metric": "val_accuracy",
    "trials": 5,
    "prune": {"after_epochs": 1, "startup_trials": 1},
    "space": {"train.label_smoothing": {"low": 0.0, "high": 0.3}},
}


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    server = Postgres(tmp_path_factory.mktemp("optuna-pg"))
    server.start()
    try:
        server.create_database("optuna")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sweep_project(tmp_path_factory, archives) -> Path:
    path, md5 = archives["cifar10"]
    project = create(tmp_path_factory.mktemp("sweep") / "p", {"cifar10": {"url": str(path), "md5": md5}})
    edit_params(project, lambda p: p.update(datasets=["cifar10"]))
    (project / "sweeps.yaml").write_text(yaml.safe_dump({"e2e": SWEEP}))
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "a sweep")
    return project


def test_unreachable_storage_and_unknown_sweep_are_one_line_before_any_training(sweep_project):
    bad = "postgresql://user:s3cret@127.0.0.1:1/optuna"
    out = sweep_command(sweep_project, "e2e", "--storage", bad, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "s3cret" not in out.stdout + out.stderr
    [line] = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: cannot use the sweep storage postgresql+psycopg2://user:***@127.0.0.1:1/optuna")
    out = sweep_command(sweep_project, "e2", check=False)
    assert out.returncode == 2 and "error: sweeps.yaml has no sweep 'e2' (did you mean 'e2e'?)" in out.stderr
    assert not (sweep_project / "mlflow.db").exists() and not (sweep_project / "sweeps").exists()


def trial_states(storage: str) -> dict[int, str]:
    import optuna

    study = optuna.load_study(study_name="e2e", storage=storage)
    return {t.number: t.state.name for t in study.get_trials(deepcopy=False)}


def add_unbeatable_trials(storage: str, count: int) -> None:
    """Complete trials no real one can match, so the median pruner stops every later trial after
    its first epoch: pruning, deterministic."""
    import optuna
    from optuna.distributions import FloatDistribution

    study = optuna.load_study(study_name="e2e", storage=storage)
    for _ in range(count):
        study.add_trial(
            optuna.trial.create_trial(
                params={"train.label_smoothing": 0.1},
                distributions={"train.label_smoothing": FloatDistribution(0.0, 0.3)},
                value=2.0,
                intermediate_values={1: 2.0, 2: 2.0},
            )
        )


def start_worker(path: Path, storage: str, log: Path) -> subprocess.Popen:
    env = environment() | {"CIFAR_SWEEP_HEARTBEAT_S": "2"}
    with open(log, "w") as out:
        return subprocess.Popen(
            ["cifar-sweep", "e2e", "--storage", storage],
            cwd=path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: killing it kills its dvc and training, as a lost machine
        )


def wait_for_running_trial(log: Path, storage: str, worker: subprocess.Popen) -> int:
    """The trial the worker logging to `log` trains, once its training run has started."""
    import optuna

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert worker.poll() is None, log.read_text()
        started = [
            line.split()[1] for line in log.read_text().splitlines() if line.startswith("trial ") and "(" in line
        ]
        if started:
            study = optuna.load_study(study_name="e2e", storage=storage)
            trial = next(t for t in study.get_trials(deepcopy=False) if t.number == int(started[-1]))
            if "mlflow_run_id" in trial.user_attrs:
                return trial.number
        time.sleep(0.2)
    raise AssertionError(f"no trial started training in 180 s:\n{log.read_text()}")


def test_workers_share_a_study_a_killed_one_fails_its_trial_and_pruned_trials_leave_nothing(
    sweep_project, postgres, tmp_path
):
    from mlflow.tracking import MlflowClient

    path, storage = sweep_project, postgres.uri("optuna")
    # One worker, one trial: it creates the study and the sweep's parent run.
    first = sweep_command(path, "e2e", "--storage", storage, "--trials", "1")
    assert "trial 0: val_accuracy" in first.stdout, first.stdout + first.stderr
    best = sweep_command(path, "e2e", "--storage", storage, "--best").stdout
    assert "best: trial 0" in best and "`dvc exp apply e2e-0`" in best
    shown = [line.strip() for line in best.splitlines() if line.strip().startswith("-S ")]
    assert len(shown) == 1 and shown[0].startswith("-S 'train.label_smoothing=0.")
    recipe = yaml.safe_load(best.split("as a recipe")[1].split("\n", 1)[1].split("importance")[0])
    assert recipe["e2e"]["epochs"] == 2 and recipe["e2e"]["model"]["filters"] == [4, 8]  # what trained
    add_unbeatable_trials(storage, 2)  # trials 1 and 2

    # Two workers at once; the second is killed as soon as its trial trains.
    logs = tmp_path / "a.log", tmp_path / "b.log"
    a = start_worker(path, storage, logs[0])
    b = start_worker(path, storage, logs[1])
    try:
        killed = wait_for_running_trial(logs[1], storage, b)
        os.killpg(b.pid, signal.SIGKILL)
        b.wait(timeout=30)
        assert a.wait(timeout=300) == 0, logs[0].read_text()
    finally:
        for worker in (a, b):
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
    output = logs[0].read_text()
    assert f"trial {killed}: its worker stopped (no heartbeat); marked failed" in output, output

    states = trial_states(storage)
    assert states[0] == "COMPLETE" and states[killed] == "FAIL", states
    pruned = sorted(n for n, state in states.items() if state == "PRUNED")
    assert len(pruned) == 2 and set(states) == {0, 1, 2, killed, *pruned}, states  # 5 counted, none twice
    # Only the complete trial is a DVC experiment; the workspace holds nothing of any trial.
    experiments = run(path, "dvc", "exp", "list", "--name-only").stdout.split()
    assert experiments == ["e2e-0"], experiments
    assert not (path / "models").exists() and run(path, "git", "status", "--porcelain").stdout == ""

    client = MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    [parent] = client.search_runs(["1"], "tags.sweep = 'e2e' and attributes.run_name = 'sweep-e2e'")
    children = {
        int(r.data.tags["trial"]): r
        for r in client.search_runs(["1"], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    }
    assert set(children) == {0, killed, *pruned}
    assert (children[0].info.status, children[0].data.tags["state"]) == ("FINISHED", "complete")
    assert children[0].data.tags["dvc_experiment"] == "e2e-0"
    assert (children[killed].info.status, children[killed].data.tags["state"]) == ("KILLED", "failed")
    for number in pruned:
        assert (children[number].info.status, children[number].data.tags["state"]) == ("KILLED", "pruned")
        assert [m.step for m in client.get_metric_history(children[number].info.run_id, "val_accuracy")] == [1]

    # A new study of the same sweep (another storage) would collide with e2e-0: refused up front.
    other = f"sqlite:///{tmp_path / 'other.db'}"
    refused = sweep_command(path, "e2e", "--storage", other, check=False)
    assert refused.returncode == 2 and "already hold the names of this study's next trials (e2e-0)" in refused.stderr

    # The benchmark that records a sweep reads the same study and runs.
    from benchmarks.sweep_record import record

    data = record(path, "e2e", storage, tmp_path / "record", f"sqlite:///{path / 'mlflow.db'}")
    by_trial = {row["trial"]: row for row in data["trials"]}
    assert by_trial[0]["state"] == "complete" and len(by_trial[0]["curve"]) == 2
    assert [by_trial[n]["state"] for n in pruned] == ["pruned", "pruned"]
    assert "| 0 | complete |" in (tmp_path / "record/record.md").read_text()
    assert (tmp_path / "record/curves.png").stat().st_size > 0

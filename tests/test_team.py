"""docs/team.md, for real: two clones, one tracking server, one DVC remote.

The tests start PostgreSQL (pgserver), an S3 endpoint (moto_server) and `mlflow server
--app-name basic-auth` on top of both, and a bare git repo as `origin`. What the story builds
on is a fixture, made once and shared: alice's pipeline against the server, killed
mid-training and resumed (`trained`); her queued experiment and `dvc push` / `dvc exp push`
(`pushed`). The tests check those, then bob's clone pulling everything and rerunning nothing,
a wrong password, a login inside the tracking URI, the server down and its database down
mid-run. Each runs alone too (`pytest tests/test_team.py::<name>`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import urllib.error
from pathlib import Path

import pytest

from team_servers import S3_KEYS, TeamServers, request
from testkit.project import create, edit_params, run, run_queue, stages_run, start_training

pytestmark = pytest.mark.e2e

# One dataset: the server sees no difference between them, and test_pipeline_e2e covers both.
DATASETS = ("cifar10",)
EPOCHS = 4  # killed after 2: the rest cannot finish while the server is frozen
# MLflow retries a failing server for minutes by default; the tests want the failure now.
FAST_FAILURE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    servers = TeamServers(tmp_path_factory.mktemp("team"))
    try:
        servers.start()
        servers.add_user("alice", "alice-password-1")
        servers.add_user("bob", "bob-password-22")
        yield servers
    finally:
        servers.stop()
    assert servers.left_running() == []


def as_user(team: TeamServers, user: str, password: str | None = None) -> dict[str, str]:
    return team.client_env(user, password) | FAST_FAILURE


def use_remote(path: Path, team: TeamServers) -> None:
    """docs/team.md's remote commands: the endpoint in .dvc/config (git), the keys in .dvc/config.local (not)."""
    run(path, "dvc", "remote", "add", "-d", "-f", "team", f"s3://{team.bucket}/dvc")
    run(path, "dvc", "remote", "modify", "team", "endpointurl", team.s3_endpoint)
    run(path, "dvc", "remote", "modify", "--local", "team", "access_key_id", S3_KEYS["AWS_ACCESS_KEY_ID"])
    run(path, "dvc", "remote", "modify", "--local", "team", "secret_access_key", S3_KEYS["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="module")
def alice(tmp_path_factory, archives, session_server, team) -> Path:
    root = tmp_path_factory.mktemp("team-git")
    run(root, "git", "init", "-q", "--bare", "--initial-branch=main", "origin.git")
    data = {"cifar10": {"url": session_server.url(archives["cifar10"][0].name), "md5": archives["cifar10"][1]}}
    path = create(root / "alice", data)
    edit_params(path, lambda p: p.update(datasets=list(DATASETS)) or p["train"].update(epochs=EPOCHS))
    run(path, "git", "branch", "-M", "main")
    run(path, "git", "remote", "add", "origin", str(root / "origin.git"))
    use_remote(path, team)
    run(path, "git", "add", "-A")
    run(path, "git", "commit", "-qm", "team remote")
    return path


def runs(team: TeamServers, user: str = "alice") -> list[dict]:
    experiment = team.api("experiments/get-by-name?experiment_name=cifar", user=user)["experiment"]
    found = team.api("runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000}, user=user)
    return found.get("runs", [])


def tags(r: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in r["data"].get("tags", [])}


def steps(team: TeamServers, run_id: str, key: str) -> list[int]:
    history = team.api(f"metrics/get-history?run_id={run_id}&metric_key={key}")
    return sorted(m["step"] for m in history.get("metrics", []))


@dataclasses.dataclass(frozen=True)
class Trained:
    """alice's first `dvc repro`, SIGKILLed in training while the server froze, then resumed."""

    path: Path
    killed: dict  # the run as the server held it after the kill
    output: str  # the resuming `dvc repro`'s output


@pytest.fixture(scope="module")
def trained(alice, team) -> Trained:
    env = as_user(team, "alice")
    proc = start_training(alice, 2, env=env)
    team.mlflow.freeze()  # the training cannot log its next epoch, let alone finish, before the kill
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage: no chance to end the run
        proc.wait(timeout=30)
    finally:
        team.mlflow.thaw()
    [killed] = runs(team)
    output = run(alice, "dvc", "repro", env=env).stdout
    return Trained(alice, killed, output)


def test_the_pipeline_logs_to_the_team_server_and_a_killed_training_resumes_its_run(trained, team):
    alice, killed, output = trained.path, trained.killed, trained.output
    assert killed["info"]["status"] == "RUNNING"
    assert f"resuming MLflow run {killed['info']['run_id']}" in output
    found = {tags(r)["dataset"]: r for r in runs(team)}
    assert sorted(found) == list(DATASETS) and found["cifar10"]["info"]["run_id"] == killed["info"]["run_id"]
    for d, r in found.items():
        run_id = r["info"]["run_id"]
        assert r["info"]["status"] == "FINISHED" and r["info"]["user_id"] == "alice"
        for key in ("loss", "val_accuracy", "val_top5_accuracy"):
            assert steps(team, run_id, key) == list(range(1, EPOCHS + 1)), (d, key)
        assert {"test_accuracy", "test_top5_accuracy"} <= {m["key"] for m in r["data"]["metrics"]}
        assert json.loads((alice / f"models/{d}/mlflow_run.json").read_text())["run_id"] == run_id
        # the rows are in PostgreSQL, the server's backend store
        sql = f"SELECT count(*) FROM metrics WHERE run_uuid = '{run_id}' AND key = 'loss'"  # noqa: S608
        loss_rows = team.postgres.query("mlflow", sql)
        assert int(loss_rows) == EPOCHS
        # plots and model files are objects in the bucket, uploaded through the server
        objects = team.objects(f"mlflow/{r['info']['experiment_id']}/")
        for name in ("plots/training_curves.png", "plots/confusion_matrix.png"):
            assert f"mlflow/{r['info']['experiment_id']}/{run_id}/artifacts/{name}" in objects, (d, name)
        model_id = json.loads((alice / f"models/{d}/mlflow_run.json").read_text())["model_uri"].split("/")[-1]
        model_files = [key for key in objects if f"/models/{model_id}/artifacts/" in key]
        assert any(key.endswith("/MLmodel") for key in model_files) and any(
            key.endswith(".keras") for key in model_files
        ), objects
        version = team.api(f"registered-models/alias?name={d}&alias=champion")["model_version"]
        assert version["run_id"] == run_id
    # nothing local: no store file, no lock, no artifact folder
    assert not [p.name for p in alice.iterdir() if p.name.startswith(("mlflow.db", "mlruns", "mlartifacts"))]


def test_a_request_without_a_login_is_refused(team):
    for path in ("experiments/search", "runs/search"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            request(f"{team.url}/api/2.0/mlflow/{path}", {"max_results": 1})
        assert refused.value.code == 401


QUEUED = ("team-a",)  # one: test_pipeline_e2e runs two queued at once


@pytest.fixture(scope="module")
def pushed(trained, team) -> Path:
    """alice commits and pushes the trained project (git and `dvc push`), runs a queued
    experiment and pushes it (`dvc exp push`)."""
    alice, env = trained.path, as_user(team, "alice")
    run(alice, "git", "add", "-A")
    run(alice, "git", "commit", "-qm", "trained")
    run(alice, "git", "push", "-q", "origin", "main")
    run(alice, "dvc", "push", env=env)
    for seed, name in enumerate(QUEUED, start=7):
        command = ("dvc", "exp", "run", "--queue", "--name", name, "-S", f"train.seed={seed}", "-S", "train.epochs=1")
        run(alice, *command, "register@cifar10")
    run_queue(alice, QUEUED, env=env)
    run(alice, "dvc", "exp", "push", "origin", "team-a", env=env)
    return alice


def test_queued_experiments_log_to_the_server_and_travel_through_git(pushed, team):
    queued = {tags(r).get("dvc_experiment"): r for r in runs(team)}
    for name in QUEUED:
        assert queued[name]["info"]["status"] == "FINISHED"
        assert steps(team, queued[name]["info"]["run_id"], "loss") == [1]
    assert not (pushed / "mlflow.db").exists()
    pushed_refs = run(pushed, "git", "ls-remote", "origin").stdout
    assert "refs/exps/" in pushed_refs and "refs/heads/main" in pushed_refs


def test_a_teammate_pulls_everything_and_reruns_nothing(pushed, team):
    alice = pushed
    bob = alice.parent / "bob"
    run(alice.parent, "git", "clone", "-q", str(alice.parent / "origin.git"), str(bob))
    for key in ("access_key_id", "secret_access_key"):
        run(bob, "dvc", "remote", "modify", "--local", "team", key, S3_KEYS[f"AWS_{key.upper()}"])
    env = as_user(team, "bob")
    run(bob, "dvc", "pull", env=env)
    for d in DATASETS:
        assert (bob / f"models/{d}/model.keras").is_file() and (bob / f"metrics/{d}.json").is_file()
    output = run(bob, "dvc", "repro", env=env).stdout
    # only register, which runs on every repro: it finds alice's version and registers nothing new
    assert stages_run(output) == ["register@cifar10"] and "v1 is this model's version" in output

    run(bob, "dvc", "exp", "pull", "origin", "team-a", env=env)
    assert "team-a" in run(bob, "dvc", "exp", "show", "--csv", env=env).stdout
    run(bob, "dvc", "exp", "apply", "team-a", env=env)
    run_id = json.loads((bob / "models/cifar10/mlflow_run.json").read_text())["run_id"]
    shared = team.api(f"runs/get?run_id={run_id}", user="bob")["run"]
    assert tags(shared)["dvc_experiment"] == "team-a" and shared["info"]["user_id"] == "alice"


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_a_wrong_password_is_one_line_and_writes_nothing(trained, team):
    alice = trained.path
    edit_params(alice, lambda p: p["train"].update(epochs=3))
    failed = run(alice, "dvc", "repro", "train@cifar10", check=False, env=as_user(team, "alice", "not-her-password"))
    assert failed.returncode != 0
    [line] = error_lines(failed.stderr)
    assert "401 Unauthorized to user 'alice'" in line and "MLFLOW_TRACKING_PASSWORD" in line
    assert "Traceback" not in failed.stderr + failed.stdout
    assert not (alice / "models/cifar10").exists()
    assert stages_run(run(alice, "dvc", "repro", "train@cifar10", env=as_user(team, "alice")).stdout) == [
        "train@cifar10"
    ]


def test_a_login_in_the_tracking_uri_reaches_no_line_record_or_file(alice, team):
    """MLflow accepts `http://user:password@host` and printed it in its "View run ... at:" line;
    no line, file, MLflow record or server log may hold the password, nor the remote's S3 key."""
    password = team.users["alice"]
    env = {"MLFLOW_TRACKING_URI": team.url.replace("http://", f"http://alice:{password}@")} | FAST_FAILURE
    edit_params(alice, lambda p: p["train"].update(epochs=2))
    lines = [run(alice, "dvc", "repro", env=env), run(alice, "dvc", "push", env=env)]
    printed = "".join(r.stdout + r.stderr for r in lines)
    record = json.loads((alice / "models/cifar10/mlflow_run.json").read_text())
    assert f"MLflow run {record['run_id']}: {team.url}/#/experiments/" in printed and "View run" not in printed

    mlflow_run = team.api(f"runs/get?run_id={record['run_id']}")["run"]
    version = team.api("registered-models/alias?name=cifar10&alias=champion")["model_version"]
    experiment = mlflow_run["info"]["experiment_id"]
    model_id = record["model_uri"].split("/")[-1]
    prefixes = (f"mlflow/{experiment}/{record['run_id']}/", f"mlflow/{experiment}/models/{model_id}/")
    artifacts = [key for key in team.objects("mlflow/") if key.startswith(prefixes)]
    assert any(key.endswith(".keras") for key in artifacts), artifacts
    places = {"printed lines": printed.encode(), "run and version": json.dumps([mlflow_run, version]).encode()}
    places |= {key: team.s3().get_object(Bucket=team.bucket, Key=key)["Body"].read() for key in artifacts}
    places |= {str(f): f.read_bytes() for f in team.folder.glob("*.log")}  # the servers' own output
    kept = [f for f in alice.rglob("*") if f.is_file() and ".git" not in f.parts and f.name != "config.local"]
    assert alice / "dvc.lock" in kept and any("runs" in f.parts for f in kept), "run cache"
    places |= {str(f): f.read_bytes() for f in kept}
    for secret in (password, S3_KEYS["AWS_SECRET_ACCESS_KEY"]):
        assert [where for where, content in places.items() if secret.encode() in content] == [], secret


@pytest.mark.parametrize(
    ("what", "messages"),
    [
        # killed while it holds the stage's request (reset) or between two requests (refused)
        ("mlflow", ("failed (connection refused: it is not running", "failed (it dropped the connection mid-request")),
        ("postgres", ("failed (it answered HTTP 503 to every retry",)),
    ],
)
def test_a_server_failing_mid_run_is_one_line_and_the_next_repro_resumes(alice, team, what, messages):
    epochs = 6 if what == "mlflow" else 7  # a new run each
    edit_params(alice, lambda p: p["train"].update(epochs=epochs))
    env = as_user(team, "alice")
    before = {r["info"]["run_id"] for r in runs(team)}
    proc = start_training(alice, 1, env=env)
    team.mlflow.freeze()  # the run cannot get past its next request until the failure is in place
    try:
        if what == "mlflow":
            team.mlflow.stop(crash=True)
        else:
            team.postgres.stop()
            team.mlflow.thaw()  # it answers again, without its database
        output, _ = proc.communicate(timeout=180)
    finally:
        team.start_mlflow() if what == "mlflow" else team.postgres.start()
    assert proc.returncode != 0, output
    [line] = error_lines(output)
    assert any(m in line for m in messages) and "run `dvc repro` again" in line, line
    assert "Traceback" not in output
    assert not (alice / "models/cifar10").exists()

    resumed = run(alice, "dvc", "repro", "train@cifar10", env=env).stdout
    [new] = [r for r in runs(team) if r["info"]["run_id"] not in before]
    assert f"resuming MLflow run {new['info']['run_id']}" in resumed
    assert new["info"]["status"] == "FINISHED"
    assert steps(team, new["info"]["run_id"], "loss") == list(range(1, epochs + 1))

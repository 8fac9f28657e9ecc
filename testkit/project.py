"""A throwaway copy of this project (its own git + DVC repo) for end-to-end runs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "params.yaml", "recipes.yaml", "sweeps.yaml", ".gitignore", ".dvcignore", "stages", "src"]
TINY_TRAIN = {
    "epochs": 2,
    "batch_size": 32,
    "model": {"filters": [4, 8], "dropouts": [0.1, 0.1], "dense_units": 16, "activation": "relu"},
}
# No format by default (the stage still scores the .keras model): the shared e2e project
# exports every format, the other projects do not pay for it.
TINY_EXPORT = {"formats": [], "calibration_images": 16}


def seed_params():
    """The project's params.yaml with the seed recipe chosen: what tests of the seed network's
    values start from, whatever the project's default recipe is."""
    from cifar_pipeline.core.params import parse_params
    from cifar_pipeline.core.recipes import RECIPES_FILE, read_recipes
    from cifar_pipeline.core.yaml_reader import read_yaml

    raw = read_yaml((ROOT / "params.yaml").read_text())
    raw["recipe"] = "seed"
    return parse_params(raw, read_recipes(ROOT / RECIPES_FILE))


def environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.org",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.org",
    )
    return env


def run(
    cwd: Path, *command: str, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`command` in `cwd` with the clean environment, plus `env` (e.g. a tracking server's variables)."""
    result = subprocess.run(
        command, cwd=cwd, env=environment() | (env or {}), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def create(
    dest: Path,
    data: dict[str, dict],
    code: Path = ROOT,
    train: dict | None = None,
    recipe: str = "seed",
    export: dict | None = None,
) -> Path:
    """Copy the project at `code`, point each dataset at `data[name]` ({url, md5}), shrink training.

    `train` replaces the tiny training settings (benchmarks train the real model); a
    mapping in it (`model`, say) updates that section of params.yaml key by key. The tiny
    settings shrink the seed network, so `recipe` is the seed's unless a caller says otherwise.
    `export` updates the tiny export settings (with `train`, params.yaml's stay).
    """
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = code / name
        if not source.exists():  # an older checkout (a benchmark's baseline) may lack sweeps.yaml
            continue
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)

    def shrink(params: dict) -> None:
        if "recipe" in params:  # a checkout from before named recipes (footprint's baseline) has none
            params["recipe"] = recipe
        for name, values in data.items():
            params["data"][name].update(values)
        for key, value in (TINY_TRAIN if train is None else train).items():
            if isinstance(value, dict):
                params["train"][key].update(value)
            else:
                params["train"][key] = value
        if train is None and "export" in params:
            params["export"].update(TINY_EXPORT | (export or {}))

    edit_params(dest, shrink)
    run(dest, "git", "init", "-q")
    run(dest, "dvc", "init", "-q")
    run(dest, "git", "add", "-A")
    run(dest, "git", "commit", "-qm", "project copy")
    return dest


def edit_params(project: Path, change) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    change(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def run_queue(path: Path, names: tuple[str, ...], env: dict[str, str] | None = None) -> None:
    """`dvc queue start -j 2`, then wait (10 minutes at most) until every experiment in `names` has
    ended, and assert each succeeded (the queue's status, the experiments' and workers' logs in the
    failure).

    `dvc queue start` leaves a dvc-task monitor process per worker that keeps the command's stdout
    and stderr until its worker exits, so its output goes to a file: with pipes, waiting for the
    command is waiting for the workers, with no deadline of ours and nothing said when one hangs.
    A worker that stopped with experiments still queued (DVC's own bug, treeverse/dvc#10562) is
    started again, as docs/troubleshooting.md tells a user to."""
    starts, started = 0, 0.0
    status, ours = "", []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        stalled = "Queued" in status and "Worker status: 0 active" in status and time.monotonic() > started + 30
        if starts == 0 or (stalled and starts < 3):
            start_queue(path, env)
            starts, started = starts + 1, time.monotonic()
        status = run(path, "dvc", "queue", "status").stdout
        ours = [line.split() for line in status.splitlines() if set(line.split()) & set(names)]
        if sum(words[-1] in ("Success", "Failed") for words in ours) == len(names):
            break
        time.sleep(5)  # each `dvc queue status` is a DVC process: ~1 s of CPU the experiments need
    logs = "".join(run(path, "dvc", "queue", "logs", name, check=False).stdout for name in names)
    workers = "".join(
        f"\n--- {out.name}\n" + out.read_text(errors="replace")[-4000:]
        for out in sorted((path / ".dvc/tmp/exps/celery").glob("*.out"))
    )
    assert sum(words[-1] == "Success" for words in ours) == len(names), f"{status}\n{logs}{workers}"


def start_queue(path: Path, env: dict[str, str] | None = None) -> None:
    """`dvc queue start -j 2` with its output in a file (see run_queue)."""
    log = path / ".dvc/tmp/queue-start.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("a") as out:
        result = subprocess.run(
            ("dvc", "queue", "start", "-j", "2"),
            cwd=path,
            env=environment() | (env or {}),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    assert result.returncode == 0, f"dvc queue start exited {result.returncode}\n{log.read_text()}"


def start_training(path: Path, epochs_done: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`dvc repro train@cifar10` in its own process group, returned once a checkpoint has `epochs_done` epochs."""
    proc = subprocess.Popen(
        ["dvc", "repro", "train@cifar10"],
        cwd=path,
        env=environment() | (env or {}),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    done = 0
    while time.monotonic() < deadline and proc.poll() is None and done < epochs_done:
        for state in (path / "data/.checkpoints").glob("cifar10-*/state.json"):
            with contextlib.suppress(OSError, ValueError):
                done = json.loads(state.read_text())["epochs_done"]
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be interrupted"
    return proc

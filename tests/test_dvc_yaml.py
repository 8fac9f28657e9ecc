"""dvc.yaml is the map of the project: each stage lists exactly the src/ modules its script imports.

A module a stage imports but does not list would let DVC serve a stale result after that
module changes; one it lists but never imports reruns the stage for nothing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from testkit.project import ROOT

PACKAGE = "cifar_pipeline"


def module_file(name: str) -> Path | None:
    base = ROOT / "src" / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_closure(script: Path) -> set[str]:
    """src/ files the script runs: its imports, theirs, and every package __init__ on the way."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            for name in names:
                parts = name.split(".")
                if parts[0] != PACKAGE:
                    continue
                for depth in range(1, len(parts) + 1):
                    found = module_file(".".join(parts[:depth]))
                    if found and found not in seen:
                        seen.add(found)
                        todo.append(found)
    return {path.relative_to(ROOT).as_posix() for path in seen}


def test_every_stage_lists_exactly_the_src_modules_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        script = "stages/{}.py".format(re.search(r"python -m stages\.(\w+)", body["cmd"]).group(1))
        listed = {dep for dep in body["deps"] if isinstance(dep, str) and dep.startswith("src/")}
        assert script in body["deps"] and "stages/__init__.py" in body["deps"], name
        assert listed == import_closure(ROOT / script), name


def test_the_worker_command_reads_the_train_stages_inputs(monkeypatch):
    """A non-chief worker trains on what the chief's train stage reads: the same split and statistics."""
    from cifar_pipeline.training.worker import train_inputs

    monkeypatch.chdir(ROOT)
    assert train_inputs("cifar10") == (Path("data/split/cifar10"), Path("data/stats/cifar10.json"))


def test_the_dvc_plots_columns_are_the_metric_names_the_train_stage_writes():
    from cifar_pipeline.core.metric_names import ACCURACY_KEYS, LOSS_KEYS

    plots = {next(iter(p)): next(iter(p.values())) for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]}
    assert tuple(plots["plots/loss"]["y"]) == LOSS_KEYS
    assert tuple(plots["plots/accuracy"]["y"]) == ACCURACY_KEYS


def test_the_train_stage_reruns_on_exactly_what_identifies_a_run():
    """A param that identifies a run (and so its checkpoint and MLflow params) must rerun train:
    data and split as params, the train values through the recipe stage's resolved file."""
    from cifar_pipeline.core.run_identity import RECIPE_STAGE_PARAMS, RESOLVED_TRAIN, dvc_params

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages["train"]["do"]["params"] == dvc_params()
    assert RESOLVED_TRAIN in stages["train"]["do"]["deps"]
    assert stages["recipe"]["do"]["params"] == RECIPE_STAGE_PARAMS
    assert stages["recipe"]["do"]["outs"] == [RESOLVED_TRAIN]
    assert "recipes.yaml" in stages["recipe"]["do"]["deps"]

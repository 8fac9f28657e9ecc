"""The package's subpackages are layers: each imports only the ones below it, so a newcomer can
read the pipeline bottom-up and a change in a lower layer never waits on a higher one."""

from __future__ import annotations

import ast

from testkit.project import ROOT

PACKAGE = ROOT / "src" / "cifar_pipeline"
# Each layer and the layers it may import (besides itself).
BELOW = {
    "core": set(),
    "data": {"core"},
    "tracking": {"core"},
    "training": {"core", "data", "tracking"},
    "inference": {"core", "tracking"},
    "registry": {"core", "tracking", "inference"},
    "export": {"core", "tracking", "inference"},
    "sweep": {"core", "tracking"},  # runs training as DVC experiments, never imports it
}


def test_every_module_lives_in_a_layer_and_imports_only_layers_below_it():
    assert {path.name for path in PACKAGE.iterdir() if path.suffix == ".py"} == {"__init__.py"}
    assert {path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"} == set(BELOW)
    wrong = []
    for layer, allowed in BELOW.items():
        for path in (PACKAGE / layer).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cifar_pipeline"):
                    parts = node.module.split(".")
                    target = parts[1] if len(parts) > 1 else None
                    if target not in allowed | {layer}:
                        wrong.append(f"{path.relative_to(ROOT)} imports {node.module}")
                elif isinstance(node, ast.Import) and any(a.name.startswith("cifar_pipeline") for a in node.names):
                    wrong.append(f"{path.relative_to(ROOT)}: import cifar_pipeline... (use from-imports)")
    assert not wrong, wrong


def python_files(*folders: str) -> list:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def test_modules_and_functions_stay_short_enough_to_read():
    """A module over 350 lines or a function over 50 holds more than one job (docs/development.md)."""
    long = []
    for path in python_files("src", "benchmarks", "stages", "testkit"):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > 350:
            long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 50:
                long.append(f"{path.relative_to(ROOT)}: {node.name} is {node.end_lineno - node.lineno + 1} lines")
    assert not long, long


def test_benchmarks_and_testkit_never_import_the_tests_or_edit_sys_path():
    """Both run as packages from the repository root (`python -m benchmarks.<name>`)."""
    wrong = []
    for path in python_files("benchmarks", "testkit"):
        text = path.read_text(encoding="utf-8")
        if "sys.path" in text:
            wrong.append(f"{path.relative_to(ROOT)} edits sys.path")
        for node in ast.walk(ast.parse(text)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            modules = {p.stem for p in (ROOT / "tests").glob("*.py")}
            if any(name.split(".")[0] in modules | {"tests"} for name in names):
                wrong.append(f"{path.relative_to(ROOT)} imports {names}")
    assert not wrong, wrong

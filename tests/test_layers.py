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

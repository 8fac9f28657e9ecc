"""pyproject.toml declares what the package needs as ranges; requirements.txt locks them."""

from __future__ import annotations

import re

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from testkit.project import ROOT


def pins() -> dict[str, str]:
    """requirements.txt's `name==version` lines, by canonical name."""
    found = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if match := re.fullmatch(r"([A-Za-z0-9._\[\]-]+)==(\S+)", line.strip()):
            found[canonicalize_name(Requirement(match.group(1)).name)] = match.group(2)
    return found


def test_every_declared_dependency_is_pinned_inside_its_range_and_every_pin_declared():
    declared = {
        canonicalize_name(r.name): r
        for r in map(Requirement, tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    }
    locked = pins()
    assert sorted(declared) == sorted(locked)
    outside = {
        name: (str(req.specifier), locked[name]) for name, req in declared.items() if locked[name] not in req.specifier
    }
    assert outside == {}


def test_the_gpu_requirements_are_the_runtime_plus_the_same_tensorflow_with_cuda():
    lines = [line.strip() for line in (ROOT / "requirements-gpu.txt").read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    assert lines == ["-r requirements.txt", f"tensorflow[and-cuda]=={pins()['tensorflow']}"]

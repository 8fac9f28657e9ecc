"""YAML as DVC reads it (ruamel.yaml, YAML 1.2), within bounds: the one reader of params.yaml
and dvc.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml import YAMLError as _YAMLError

from cifar_pipeline.core.errors import PipelineError
from cifar_pipeline.core.param_readers import ParamsError


class YamlTooBig(PipelineError, ValueError):
    """A YAML file over the bounds below."""


# Bounds on a params or dvc.yaml file: a few kB and a few hundred values in practice. An alias
# bomb (anchors referring to anchors) is small on disk and loads as shared objects, but expands
# to billions of values for whatever walks it; nesting thousands deep overflows the parser.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 64


def read_yaml(text: str, name: str = "params.yaml") -> Any:
    """YAML as DVC reads it (ruamel.yaml, YAML 1.2), so both agree on every value, within bounds.

    PyYAML follows YAML 1.1, where `1e-3` is a string; DVC records it as 0.001.
    """
    if len(text) > MAX_YAML_BYTES:
        raise YamlTooBig(f"{name} is {len(text):,} characters, over the {MAX_YAML_BYTES:,} a params file may hold")
    try:
        value = YAML(typ="safe").load(text)
    except RecursionError:
        raise YamlTooBig(_too_deep(name)) from None
    _check_bounds(value, name)
    return value


def _too_deep(name: str) -> str:
    return f"{name} nests deeper than {MAX_YAML_DEPTH} levels; a params file needs a few: flatten it"


def _check_bounds(value: Any, name: str) -> None:
    """Count every value as a reader would see it (an alias's target once per use)."""
    pending, seen = [(value, 1)], 0
    while pending:
        node, depth = pending.pop()
        seen += 1
        if seen > MAX_YAML_VALUES:
            raise YamlTooBig(
                f"{name} expands to more than {MAX_YAML_VALUES:,} values (anchors and aliases that repeat each "
                f"other?); a params file holds a few hundred: write the values out"
            )
        if depth > MAX_YAML_DEPTH:
            raise YamlTooBig(_too_deep(name))
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        pending.extend((child, depth + 1) for child in children)


def read_yaml_file(path: Path, missing: str) -> Any:
    try:
        return read_yaml(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: {missing}") from None
    except UnicodeDecodeError as err:
        raise ParamsError(
            f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); save it as UTF-8"
        ) from None
    except YamlTooBig as err:
        raise ParamsError(str(err)) from None
    except _YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ParamsError(f"{path} is not valid YAML{at}: {getattr(err, 'problem', err)}; fix the syntax") from None

"""How a params.yaml value is read: the readers a dataclass field declares (a type with its
range or choices), and `read_section`, which reads a mapping into its dataclass by them.

Nothing here knows the pipeline's keys; `params` declares them. Every failure is one
`ParamsError` line naming the dotted key, what is allowed, and a close match for a typo.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import field, fields, is_dataclass
from typing import Any

from cifar_pipeline.core.errors import PipelineError, url_secret


class ParamsError(PipelineError, ValueError):
    """params.yaml is unreadable or holds a key or value the pipeline cannot use."""


def fail(where: str, problem: str) -> typing.NoReturn:
    raise ParamsError(f"params.yaml: {where} {problem}")


def did_you_mean(key: Any, allowed: Any, prefix: str = "") -> str:
    close = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


Reader = Callable[[Any, str], Any]  # (value, dotted key) -> the parsed value, or ParamsError


def integer(minimum: int | None = None, maximum: int | None = None) -> Reader:
    def read(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(where, f"must be an integer, got {value!r}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            fail(where, f"must be an integer {bounds}, got {value}")
        return value

    return read


def number(allowed: Callable[[float], bool] = lambda x: True, text: str = "") -> Reader:
    """A float; `allowed` its range, `text` that range in words ("> 0")."""

    def read(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(where, f"must be a number, got {value!r}")
        if not allowed(float(value)):
            fail(where, f"must be {text}, got {float(value)}")
        return float(value)

    return read


# Weight decay, momentum, label smoothing, warm-up share: a number in [0, 1).
fraction = number(lambda x: 0.0 <= x < 1.0, "at least 0 and below 1")


def choice(*allowed: str) -> Reader:
    def read(value: Any, where: str) -> str:
        if value not in allowed:
            fail(where, f"must be one of {list(allowed)}, got {value!r}{did_you_mean(value, allowed)}")
        return value

    return read


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        fail(where, f"must be true or false, got {value!r}")
    return value


def auto_or_bool(value: Any, where: str) -> str | bool:
    if value == "auto" or isinstance(value, bool):
        return value
    fail(where, f"must be auto, true or false, got {value!r}")


def precision(value: Any, where: str) -> str | bool:
    """`auto_or_bool`, or the compute dtype by name: a GPU may take bfloat16 (no loss scaling),
    and the tests run the GPU's float16 path on a CPU."""
    if value in ("auto", "float16", "bfloat16") or isinstance(value, bool):
        return value
    fail(where, f"must be auto, true, false, float16 or bfloat16, got {value!r}")


def text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        fail(where, f"must be a non-empty string, got {value!r}")
    return value.strip()


def stored_url(value: Any, where: str) -> str:
    """A URL that params.yaml, dvc.lock and DVC's run cache will keep: refused while it holds a
    secret, which would then be in git and every cache (the error names the key, not the secret)."""
    if not isinstance(value, str) or not value.strip():
        fail(where, "must be a URL or a path")
    secret = url_secret(value.strip())
    if secret is not None:
        fail(
            where,
            f"holds {secret}, which params.yaml, dvc.lock and DVC's run cache would store: take it out "
            f"and put `machine HOST login USER password TOKEN` in ~/.netrc (or the file $NETRC names); "
            f"for a pre-signed URL, download the archive yourself and set the url to its path",
        )
    return value.strip()


def md5(value: Any, where: str) -> str:
    digest = text(value, where).lower()
    if not re.fullmatch(r"[0-9a-f]{32}", digest):
        fail(where, f"must be 32 hexadecimal digits, got {value!r}")
    return digest


def optional(read: Reader) -> Reader:
    return lambda value, where: None if value is None else read(value, where)


def list_of(read: Reader, kind: str, allow_empty: bool = False) -> Reader:
    """A tuple of values each read by `read`, named `where[i]` in errors."""

    def read_list(value: Any, where: str) -> tuple:
        if not isinstance(value, list) or (not value and not allow_empty):
            fail(where, f"must be a {'' if allow_empty else 'non-empty '}list of {kind}, got {value!r}")
        return tuple(read(item, f"{where}[{i}]") for i, item in enumerate(value))

    return read_list


def declared(read: Reader) -> Any:
    """A dataclass field read by `read`. No default: params.yaml (or the chosen recipe in
    recipes.yaml) holds every value, the one place for it; code that needs a variant starts
    from the loaded params (`dataclasses.replace`)."""
    return field(metadata={"read": read})


Rules = Mapping[type, tuple[Callable[[Any], None], ...]]  # a dataclass -> its cross-field checks


def mapping(value: Any, where: str, allowed: set[str], required: set[str] | None = None) -> dict[str, Any]:
    label = where or "the top level"
    if not isinstance(value, dict):
        raise ParamsError(f"params.yaml: {label} must be a mapping of keys {sorted(allowed)}, got {value!r}")
    prefix = f"{where}." if where else ""
    for key in value:
        if key not in allowed:
            raise ParamsError(
                f"params.yaml: unknown key '{prefix}{key}'{did_you_mean(key, allowed, prefix)}; "
                f"allowed keys in {label}: {sorted(allowed)}"
            )
    for key in sorted(allowed if required is None else required):
        if key not in value:
            raise ParamsError(f"params.yaml: missing key '{prefix}{key}'; add it (see the README's params table)")
    return value


def read_section(cls: type, value: Any, where: str, rules: Rules, readers: dict[str, Reader] | None = None) -> Any:
    """`cls` from the mapping `value`, each field by its declared reader (or `readers`' for this
    use), each nested dataclass as a section, then `rules[cls]`."""
    section = mapping(value, where, {f.name for f in fields(cls)})
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        key = f"{where}.{f.name}"
        if is_dataclass(hints[f.name]):
            values[f.name] = read_section(hints[f.name], section[f.name], key, rules)
        else:
            values[f.name] = (readers or {}).get(f.name, f.metadata["read"])(section[f.name], key)
    result = cls(**values)
    for rule in rules.get(cls, ()):
        rule(result)
    return result

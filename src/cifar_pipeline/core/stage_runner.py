"""What every stage script shares: validated params first, and one clear line on failure."""

from __future__ import annotations

import argparse
import errno
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cifar_pipeline.core.errors import PipelineError, redact
from cifar_pipeline.core.files import check_replaceable, checked_commits
from cifar_pipeline.core.interrupts import catch_interrupts
from cifar_pipeline.core.params import DEFAULT_PATH, Params, flatten, load_params
from cifar_pipeline.core.yaml_reader import read_yaml

DVC_YAML = Path("dvc.yaml")


class ParamsChanged(PipelineError):
    """params.yaml changed while the stage ran: its outputs would be recorded with the wrong params."""


def run_stage(
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    body: Callable[[argparse.Namespace, Params], Any],
    inputs: Callable[[argparse.Namespace], dict[Path, str]] | None = None,
    outputs: Callable[[argparse.Namespace], list[Path]] | None = None,
) -> None:
    """Parse argv, load params.yaml (fail before any work), check inputs and outputs, run the stage.

    `inputs` maps each input path to the stage that makes it, for a clear message when a
    stage is run by hand before that one; `outputs` lists the folders the stage will
    replace, refused up front unless this pipeline made them. Problems a user can fix (`PipelineError`, or
    the file system refusing a read or write) print as one `error:` line and exit 2;
    anything else is a bug and keeps its traceback.
    """
    parser = argparse.ArgumentParser(description=description)
    add_arguments(parser)
    args = parser.parse_args()
    catch_interrupts()
    try:
        params = load_params(dataset=getattr(args, "dataset", None))
        for path, maker in (inputs(args) if inputs else {}).items():
            if not path.exists():
                raise PipelineError(
                    f"cannot read {path}: it does not exist; the {maker.split('@')[0]} stage makes it: "
                    f"run `dvc repro {maker}` (or `dvc repro` for everything)"
                )
        for path in outputs(args) if outputs else []:
            check_replaceable(path)
        with checked_commits(params_unchanged(Path(sys.argv[0]).name, getattr(args, "dataset", None))):
            body(args, params)
    except PipelineError as err:
        print(f"error: {redact(str(err))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            "error: interrupted; this stage left no output. Run `dvc repro` again: "
            "training resumes after its last finished epoch",
            file=sys.stderr,
        )
        sys.exit(130)
    except OSError as err:
        print(f"error: {file_system_problem(err)}", file=sys.stderr)
        sys.exit(2)


def file_system_problem(err: OSError) -> str:
    """One line that tells a failed read from a failed write and names the path that failed.

    `shutil.copy` (MLflow's local artifact store) names the source first and the destination
    second; on a full disk the destination is the place to name.
    """
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    path = err.filename2 if full and err.filename2 else err.filename
    where = f" {path}" if path else ""
    if err.errno == errno.ENOENT:
        return f"cannot read{where}: no such file or folder; run `dvc repro` to make the pipeline's inputs"
    if full:
        return f"no space left on the device writing{where}; {_space_hint(path)}"
    return f"cannot write{where}: {err.strerror or err}; check the folder's permissions and free space"


def _space_hint(path: str | None) -> str:
    if path is None:
        return "free some space and run again"
    if "mlruns" in Path(path).parts:  # the local MLflow store's artifacts (tracking.mlflow_store)
        return (
            "it is MLflow's artifact store: free space on that disk, or set MLFLOW_TRACKING_URI to a store "
            "on another; run `dvc repro` again"
        )
    if Path(path).is_relative_to(tempfile.gettempdir()):
        return "it is the system temp folder: free space there, or set TMPDIR to a folder on a disk with space"
    return "free space on that disk and run `dvc repro` again"


def declared_params(script: str, item: str | None, dvc_yaml: Path = DVC_YAML) -> list[tuple[str, str]]:
    """The params `dvc.yaml` declares for the stage that runs `stages/<script>` (`python -m
    stages.<name>`), as (file, key) pairs with `${item}` filled in (`${recipe}`-style keys are
    filled from params.yaml when read).

    These are the values DVC records in dvc.lock when the stage finishes.
    """
    if not dvc_yaml.is_file():
        return []
    stages = (read_yaml(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {})
    for stage in stages.values():
        body = stage.get("do", stage)
        if re.search(rf"\bstages\.{re.escape(Path(script).stem)}\b", str(body.get("cmd", ""))):
            entries: list[tuple[str, str]] = []
            for entry in body.get("params", []):
                if isinstance(entry, dict):  # another params file: {file: [keys]}
                    entries += [(str(file), str(key)) for file, keys in entry.items() for key in keys]
                else:
                    entries.append((DEFAULT_PATH.name, str(entry)))
            return [(file, key.replace("${item}", item or "")) for file, key in entries]
    return []


def _lookup(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _values(entries: list[tuple[str, str]], folder: Path = DEFAULT_PATH.parent) -> dict[str, Any]:
    """Each declared key's leaf values as dotted keys (`file:key` outside params.yaml); raises on
    an unreadable file."""
    files: dict[str, Any] = {}

    def read(name: str) -> Any:
        if name not in files:
            files[name] = read_yaml((folder / name).read_text(encoding="utf-8")) or {}
        return files[name]

    found: dict[str, Any] = {}
    for file, key in entries:
        key = re.sub(r"\$\{([^}]+)\}", lambda match: str(_lookup(read(DEFAULT_PATH.name), match.group(1))), key)
        node = _lookup(read(file), key)
        name = key if file == DEFAULT_PATH.name else f"{file}:{key}"
        found.update(flatten(node, f"{name}.") if isinstance(node, dict) else {name: node})
    return found


def params_unchanged(script: str, item: str | None) -> Callable[[], None] | None:
    """A check, run before any output is put in place, that the stage's params are what it started with.

    Otherwise DVC would record in dvc.lock the values in params.yaml when the stage ends,
    not the ones it ran with, and `dvc status` would call a stale output up to date.
    """
    keys = declared_params(script, item)
    if not keys:
        return None
    started = _values(keys)

    def unchanged() -> None:
        try:
            now = _values(keys)
        except Exception:  # any read or parse failure means it changed
            now = {}
        changed = [
            f"{key} {started.get(key)!r} -> {now.get(key)!r}"
            for key in sorted(set(started) | set(now))
            if started.get(key) != now.get(key)
        ]
        if changed:
            raise ParamsChanged(
                f"params.yaml or recipes.yaml changed while this stage ran: {'; '.join(changed[:5])}"
                f"{' ...' if len(changed) > 5 else ''}; its output was not kept: run `dvc repro` again"
            )

    return unchanged

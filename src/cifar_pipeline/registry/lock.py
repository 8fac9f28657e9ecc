"""One register stage at a time per registered model, on any MLflow store.

MLflow has no compare-and-set for aliases: two registrations that read the same champion
and then both move `champion` leave it on whichever wrote last, the worse model perhaps.
The lock is itself a registered model, `<name>.lock`: creating a registered model whose name
exists fails on every store (a unique key in SQLite and PostgreSQL), so exactly one creator
wins, on one machine (`dvc queue start -j 2`) or across a team's tracking server.

A holder killed before it let go leaves the lock behind; it is taken over when its process is
gone (same machine) or it has not shown a sign of life for `STALE_AFTER_S`.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from mlflow.entities.model_registry import RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cifar_pipeline.core.errors import PipelineError

STALE_AFTER_S = 600.0  # a holder refreshes `heartbeat` after each model it scores (seconds to minutes)
WAIT_S = 1800.0
POLL_S = (0.2, 1.0)


class LockTimeout(PipelineError):
    """Another register stage held the lock for longer than WAIT_S."""


def lock_name(name: str) -> str:
    return f"{name}.lock"


def _me() -> dict[str, str]:
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "heartbeat": f"{time.time():.3f}"}


def _stale(lock: RegisteredModel) -> str | None:
    """Why the holder of `lock` is no longer there, or None while it may be."""
    tags = lock.tags or {}
    if tags.get("host") == socket.gethostname() and tags.get("pid", "").isdigit():
        try:
            os.kill(int(tags["pid"]), 0)
        except ProcessLookupError:
            return f"its process {tags['pid']} on this machine is gone"
        except PermissionError:
            pass  # alive, another user's
    try:
        silent = time.time() - float(tags.get("heartbeat", "nan"))
    except ValueError:
        silent = float("nan")
    if not silent <= STALE_AFTER_S:  # also NaN: a lock without a heartbeat
        return f"it showed no sign of life for {silent:.0f} s" if silent == silent else "it has no heartbeat"
    return None


def _take(client: MlflowClient, lock: str, name: str) -> bool:
    """Create the lock; False if someone else holds it."""
    try:
        client.create_registered_model(
            lock,
            tags=_me(),
            description=(
                f"Held by the register stage while it moves {name}'s aliases; deleted when it ends. "
                f"If no register stage is running, delete it."
            ),
        )
        return True
    except MlflowException as err:
        # DOES_NOT_EXIST: MLflow's SQL store re-reads the lock after its insert failed, and the
        # holder let go in between; either way someone else held it a moment ago.
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
            raise
        return False


@contextmanager
def registration_lock(
    client: MlflowClient, name: str, say: Callable[[str], None] = print
) -> Iterator[Callable[[], None]]:
    """Hold `<name>.lock` while the body runs; yield a heartbeat to call during long work."""
    lock = lock_name(name)
    deadline = time.monotonic() + WAIT_S
    waiting_said = False
    while True:
        if _take(client, lock, name):
            break
        try:
            held = client.get_registered_model(lock)
        except MlflowException:
            continue  # let go between our two requests: try again at once
        why = _stale(held)
        if why is not None:
            say(f"taking over the registry lock {lock} of {held.tags.get('host')}:{held.tags.get('pid')}: {why}")
            with suppress(MlflowException):
                client.delete_registered_model(lock)
            continue
        if time.monotonic() > deadline:
            raise LockTimeout(
                f"another register stage ({held.tags.get('host')}:{held.tags.get('pid')}) has held {lock} for over "
                f"{WAIT_S:.0f} s; if none is running, delete the registered model {lock} (mlflow ui, Models) and rerun"
            )
        if not waiting_said:
            say(f"waiting for another register stage of {name} ({held.tags.get('host')}:{held.tags.get('pid')})")
            waiting_said = True
        time.sleep(random.uniform(*POLL_S))  # noqa: S311 (jitter, not a secret)

    def heartbeat() -> None:
        client.set_registered_model_tag(lock, "heartbeat", f"{time.time():.3f}")

    me = _me()
    try:
        yield heartbeat
    finally:
        with suppress(MlflowException):
            tags = client.get_registered_model(lock).tags or {}
            if (tags.get("host"), tags.get("pid")) == (me["host"], me["pid"]):  # not one that took ours over
                client.delete_registered_model(lock)

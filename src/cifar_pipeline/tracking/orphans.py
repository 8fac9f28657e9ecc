"""Runs left RUNNING by a process that died without ending them (SIGKILL, the OOM killer, a
power cut, a killed `dvc queue` worker whose temporary copy DVC then deleted).

Every training and evaluation run records the process it runs in (host, pid, start time);
each training start ends as KILLED the RUNNING runs of its experiment whose process is gone
from this host. A run whose process is on another host is left alone: nothing here can tell
whether it is alive. A run that is resumed later (its checkpoint survived) simply runs again.
"""

from __future__ import annotations

import socket

import psutil
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

OWNER_TAG = "process"
REASON = "its process ended without ending the run (killed); marked KILLED by the next training start"


def this_process() -> str:
    me = psutil.Process()
    return f"{socket.gethostname()}:{me.pid}:{me.create_time():.2f}"


def is_gone(owner: str) -> bool:
    """Whether the process `owner` names (host:pid:start) is known to have ended."""
    try:
        host, pid, started = owner.rsplit(":", 2)
        if host != socket.gethostname():
            return False
        return abs(psutil.Process(int(pid)).create_time() - float(started)) > 0.05  # the pid was reused
    except psutil.NoSuchProcess:
        return True
    except (ValueError, psutil.Error):
        return False


def end_orphans(experiment_id: str, keep: str) -> list[str]:
    """End the experiment's orphaned RUNNING runs (not `keep`) as KILLED; their ids."""
    client = MlflowClient()
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    ended = []
    for run in running:
        owner = run.data.tags.get(OWNER_TAG)
        if run.info.run_id != keep and owner and is_gone(owner):
            client.set_tag(run.info.run_id, "failure", REASON)
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            ended.append(run.info.run_id)
    return ended

"""What every benchmark shares: the machine a number came from, and a timed child process."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from cifar_pipeline.training.hardware import cpu_flags, cpuinfo_value
from testkit.project import environment

ROOT = Path(__file__).resolve().parents[1]
SIMD = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")


def machine() -> dict:
    """What ran the numbers: training speed differs about 3x between the CPUs this project runs on.
    (The GPU count comes from a training process: asking TensorFlow here would import it.)"""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpuinfo_value(("model name",)) or platform.processor(),
        "simd": [flag for flag in SIMD if flag in cpu_flags()],
        "cores": os.cpu_count(),
        "memory_gib": round(memory, 1),
        "python": platform.python_version(),
        **{package: metadata.version(package) for package in ("tensorflow", "keras", "mlflow")},
    }


def machine_line(m: dict) -> str:
    """The machine as one report line."""
    return f"{m['cpu']}, {m['cores']} cores, {' '.join(m['simd']) or 'no AVX2'}"


def timed(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS in GB of the largest process in the command's tree (its own
    rusage, from wait4); a failure raises with the end of its output."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=cwd, env=env or environment(), stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status):
            out.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed:\n{out.read().decode()[-3000:]}")
    return wall, usage.ru_maxrss / 1e6  # kB -> GB


def warm_up(seconds: float) -> None:
    """Busy both cores for a while first: the first measured config otherwise runs on a cold CPU."""
    code = f"import numpy as np, time\nend = time.time() + {seconds}\na = np.ones((1024, 1024), np.float32)\n"
    code += "while time.time() < end: a @ a"
    subprocess.run([sys.executable, "-c", code], check=True, env=environment())


def run_module(name: str, config: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m benchmarks.<name> CONFIG` from the repository root, in its own process (TensorFlow
    reads its environment variables at import, and each run starts from a fresh graph)."""
    command = [sys.executable, "-m", f"benchmarks.{name}", config]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, check=False)


def result_line(out: subprocess.CompletedProcess, what: str) -> dict:
    """The `RESULT {json}` line a run module prints last; its stderr's end when there is none."""
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))

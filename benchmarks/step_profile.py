"""Where the default recipe's train step goes, op by op, and the step time this machine allows.

    python -m benchmarks.step_profile                          # ~6 minutes on 2 cores
    python -m benchmarks.step_profile --baseline /tmp/e42b7df  # + the same step from another checkout
    python -m benchmarks.step_profile --smoke --out /tmp/p     # the code paths only (what the tests run)

Each setup is the default recipe (`params.yaml`'s, airbench94) at its batch of 1,024, trained on
random uint8 images by the train stage's own `new_classifier` and `fit_classifier` (Lookahead
included), in its own process: one warm-up epoch, one timed epoch (steady images/s: the median
batch), one epoch under TensorFlow's profiler. The profile is read from its XSpace file: every
kernel's time, grouped by what it computes. The same process measures the machine's roofs
(bfloat16 conv/matmul peak, memory bandwidth), and the model's layers give each group's work
(FLOPs for convolutions, bytes for the memory-bound rest), so the *limit* is the step time if
every group ran at its roof, one after the other. `--baseline` runs this script's measurement on
another checkout's code (`git worktree add /tmp/e42b7df e42b7df`), side by side.
Writes results.json (after every setup) and results.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, machine, machine_line, result_line, warm_up
from testkit.project import environment

# What each group of kernels computes, tried in order on (kernel type, op name); the first match wins.
CATEGORIES: dict[str, object] = {
    "conv backward (weights)": lambda kind, name: "BackpropFilter" in kind or "rows_weight_gradient" in name,
    "conv backward (input)": lambda kind, name: "BackpropInput" in kind,
    "conv forward": lambda kind, name: "Conv2D" in kind,
    "BatchNorm": lambda kind, name: "BatchNorm" in kind or re.search(r"_bn\d", name) is not None,
    "GELU": lambda kind, name: "gelu" in name or kind == "ExecuteAsyncOnStream",  # XLA: only GELU is compiled
    "pooling": lambda kind, name: "Pool" in kind or "_pool" in name,
    "casts": lambda kind, name: kind == "Cast",
    "optimizer update": lambda kind, name: "sgd" in name.lower() or "optimizer" in name or "Assign" in kind,
    "head, loss, metrics, other": lambda kind, name: True,
}


def classify(kind: str, name: str) -> str:
    return next(group for group, test in CATEGORIES.items() if test(kind, name))


# (name, config, environment, cores): one variable changes from the first row at a time.
FAST = ("batchnorm", "gelu", "conv")
SETUPS: list[tuple[str, dict, dict[str, str], str | None]] = [
    ("default step (fused BatchNormalization, XLA GELU, matmul weight gradients)", {}, {}, None),
    ("Keras's BatchNormalization", {"keras_batchnorm": True}, {}, None),
    ("Keras's GELU", {"keras_gelu": True}, {}, None),
    ("Keras's Conv2D weight gradients", {"keras_conv": True}, {}, None),
    ("Keras's layers throughout (the step before issue 41)", {f"keras_{name}": True for name in FAST}, {}, None),
    ("CIFAR-100's head (100 classes)", {"classes": 100}, {}, None),
    ("whole step under XLA (jit_compile: true)", {"jit_compile": True}, {}, None),
    (
        "whole step under XLA, XLA's old CPU runtime (oneDNN convolutions)",
        {"jit_compile": True},
        {"XLA_FLAGS": "--xla_cpu_use_thunk_runtime=false"},
        None,
    ),
    ("one core (taskset -c 0)", {}, {}, "0"),
    (
        "two cores, TensorFlow asked for one thread (TF_NUM_INTEROP_THREADS=1, TF_NUM_INTRAOP_THREADS=1)",
        {},
        {"TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1"},
        None,
    ),
]


def child_command(config: dict, code: Path, cores: str | None) -> tuple[list[str], dict[str, str]]:
    """This script's `--child` on `code`'s package: the checkout's own src first on the path."""
    command = [sys.executable, "-m", "benchmarks.step_profile_model", json.dumps(config)]
    if cores is not None:
        command = ["taskset", "-c", cores, *command]
    env = environment() | {"PYTHONPATH": os.pathsep.join([str(code / "src"), str(ROOT)])}
    return command, env


def measure(name: str, config: dict, env: dict[str, str], cores: str | None, code: Path) -> dict:
    print(f"  {name} ...", flush=True)
    command, base_env = child_command(config | {"code": str(code)}, code, cores)
    out = subprocess.run(command, cwd=ROOT, env=base_env | env, capture_output=True, text=True, check=False)
    return {"name": name, "env": env, "cores": cores, **result_line(out, name)}


def markdown(results: dict) -> str:
    runs = results["runs"]
    first = runs[0]
    lines = [
        "# The default recipe's train step, op by op, against this machine's limit",
        "",
        f"Written by `python -m benchmarks.step_profile` on {results['date']}. Machine: "
        f"{machine_line(results['machine'])}. Batch {first['batch']}, {first['steps']} steps an epoch of random "
        "images; steady = the median batch of the timed epoch.",
        "",
        "| setup | code | steady img/s | vs the first row | ms per step |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        speed = r["steady_img_s"]
        lines.append(
            f"| {r['name']} | {r['commit']} | {speed:.0f} | {speed / first['steady_img_s']:.2f}x "
            f"| {1000 * r['batch'] / speed:.0f} |"
        )
    for r in runs:
        if r["name"] == SETUPS[0][0] or r["name"].startswith("baseline") or "before issue 41" in r["name"]:
            lines += ["", *markdown_profile(r)]
    return "\n".join(lines) + "\n"


def markdown_profile(run: dict) -> list[str]:
    """The run's kernels by group against the roofs: each group's time, its work, what bounds it,
    the time its roof allows, and the step's share of the sum of those limits."""
    kernels, work = run["kernel_s_per_step"], run["work_per_step"]
    total = sum(kernels.values())
    peak, bandwidth = run["peak_gflops"], run["bandwidth_gb_s"]
    lines = [
        f"## {run['name']} ({run['commit']}): kernels per step",
        "",
        f"Roofs measured in its process: {peak:.0f} GFLOP/s (best bfloat16 conv or matmul), "
        f"{bandwidth:.1f} GB/s (a streaming add). Profiled step {1000 * run['profiled_step_s']:.0f} ms "
        f"(steady {1000 * run['batch'] / run['steady_img_s']:.0f} ms); kernel time summed over TensorFlow's "
        f"compute threads {1000 * total:.0f} ms (two threads can run kernels at once); host work between steps "
        f"{1000 * run['host_s_per_step']:.0f} ms.",
        "",
        "| group | ms per step | share of kernel time | work per step | bound | limit ms | at roof |",
        "|---|---|---|---|---|---|---|",
    ]
    limit_total = 0.0
    for group in CATEGORIES:
        seconds = kernels.get(group, 0.0)
        need = work.get(group, {"flops": 0.0, "bytes": 0.0})
        if need["flops"]:
            limit, bound, amount = need["flops"] / peak / 1e9, "compute", f"{need['flops'] / 1e9:.0f} GFLOP"
        elif need["bytes"]:
            limit, bound, amount = need["bytes"] / bandwidth / 1e9, "memory", f"{need['bytes'] / 1e6:.0f} MB"
        else:
            limit, bound, amount = 0.0, "-", "-"
        limit_total += limit
        share = f"{limit / seconds:.0%}" if seconds and limit else "-"
        lines.append(
            f"| {group} | {1000 * seconds:.0f} | {seconds / total:.0%} | {amount} | {bound} | {1000 * limit:.0f} "
            f"| {share} |"
        )
    step = run["batch"] / run["steady_img_s"]
    lines += [
        "",
        f"**Limit**: {1000 * limit_total:.0f} ms a step ({run['batch'] / limit_total:.0f} images/s) if every group ran "
        f"at its roof one after another; the step runs at {1000 * step:.0f} ms, **{limit_total / step:.0%} of the "
        f"limit**. Input pipeline kernels on tf.data's threads (beside the step): "
        f"{1000 * sum(run['input_kernel_s_per_step'].values()):.0f} ms per step.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the code, measures nothing useful")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/step_profile")
    parser.add_argument("--baseline", type=Path, help="another checkout whose default step to measure alongside")
    parser.add_argument("--only", nargs="+", metavar="WORDS", help="only the setups whose name holds one of these")
    args = parser.parse_args()
    sizes = {"batch": 16, "steps": 2, "widths": [8, 16, 16]} if args.smoke else {"batch": 1024, "steps": 4}
    setups = SETUPS[:2] if args.smoke else SETUPS
    if args.only:
        setups = [s for s in setups if any(word in s[0] for word in args.only)]
    jobs = [(name, sizes | config, env, cores, ROOT) for name, config, env, cores in setups]
    if args.baseline:
        commit = git_commit(args.baseline)
        jobs.insert(1, (f"baseline: the default step at {commit}", sizes, {}, None, args.baseline.resolve()))
    if not args.smoke:
        warm_up(20)
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "categories": list(CATEGORIES)}
    results["runs"] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for name, config, env, cores, code in jobs:
        results["runs"].append(measure(name, config, env, cores, code) | {"commit": git_commit(code)})
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        (args.out / "results.md").write_text(markdown(results))
    print((args.out / "results.md").read_text())


def git_commit(path: Path) -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=path, capture_output=True, text=True).stdout
    return (out.stdout.strip() or "?") + (" (+ uncommitted src)" if dirty.strip() else "")


if __name__ == "__main__":
    main()

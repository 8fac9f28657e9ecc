"""The export stage on trained models: its wall time and its table, against issue 32's targets.

    python -m benchmarks.export_formats PROJECT [--datasets cifar10 cifar100] [--repro-seconds 1606]

PROJECT is a project where `dvc repro` has trained and evaluated the models (its params.yaml
with an `export` section). This checkout's export stage runs there, once per dataset, alone on
the machine; the tables and times go to --out (results.json, results.md). --repro-seconds is the
wall time of the default `dvc repro` without the export stage, for the stage's share of it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, machine

# issue 32's targets
INT8_SMALLER = 3.5  # times smaller than the float32 model (the ONNX file: float32 weights, no Keras wrapper)
INT8_POINTS = 0.01  # test accuracy within 1 point of the original's
B1_SPEEDUP = 2.0  # the fastest format's batch-1 latency against the .keras model's in cifar-predict
STAGE_SHARE = 0.10  # of a default `dvc repro`'s wall time


def export(project: Path, dataset: str) -> tuple[dict, float]:
    out = f"metrics/export/{dataset}.json"
    command = [
        sys.executable, str(ROOT / "stages/export.py"), dataset, f"data/split/{dataset}", f"models/{dataset}",
        f"metrics/{dataset}.json", f"exports/{dataset}", out,
    ]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    subprocess.run(command, cwd=project, env=env, check=True)
    return json.loads((project / out).read_text()), time.perf_counter() - start


def targets(table: dict[str, dict], seconds: float, repro_seconds: float | None) -> dict[str, str]:
    fastest = min((name for name in table if name != "keras"), key=lambda name: table[name]["latency_b1_ms"])
    checks = {}
    if "litert_int8" in table and "onnx" in table:
        ratio = table["onnx"]["size_mb"] / table["litert_int8"]["size_mb"]
        checks["int8 size"] = f"{ratio:.2f}x smaller than float32 (target >= {INT8_SMALLER}x)"
    if "litert_int8" in table:
        change = table["litert_int8"]["accuracy_change"]
        checks["int8 accuracy"] = f"{change * 100:+.2f} points (target within {INT8_POINTS * 100:.0f})"
    speedup = table["keras"]["latency_b1_ms"] / table[fastest]["latency_b1_ms"]
    checks["batch 1"] = f"{fastest} {speedup:.0f}x faster than .keras in cifar-predict (target >= {B1_SPEEDUP}x)"
    if repro_seconds:
        share = seconds / repro_seconds
        checks["stage share"] = f"{seconds:.0f} s adds {share:.1%} to dvc repro (target <= {STAGE_SHARE:.0%})"
    return checks


def markdown(results: dict) -> str:
    lines = [
        "# Export formats",
        "",
        f"Machine: {results['machine']['cpu']} ({', '.join(results['machine']['simd'])}), "
        f"{results['machine']['cores']} cores. Latency: per image, median of repeated runs (docs/export.md).",
        "",
    ]
    for dataset, result in results["datasets"].items():
        lines += [
            f"## {dataset} ({result['seconds']:.0f} s for the stage)",
            "",
            "| format | test accuracy | change | top-5 | size MB | batch 1 ms | batch 256 ms/image |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, row in result["table"].items():
            lines.append(
                f"| {name} | {row['test_accuracy']:.4f} | {row['accuracy_change']:+.4f} | "
                f"{row['test_top5_accuracy']:.4f} | {row['size_mb']:.2f} | {row['latency_b1_ms']:.3g} | "
                f"{row['latency_b256_ms']:.3g} |"
            )
        lines += ["", *(f"- {name}: {text}" for name, text in result["targets"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--datasets", nargs="+", default=["cifar10", "cifar100"])
    parser.add_argument("--repro-seconds", type=float, help="the default dvc repro's wall time without export")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/export")
    args = parser.parse_args()
    results = {"machine": machine(), "repro_seconds": args.repro_seconds, "datasets": {}}
    for dataset in args.datasets:
        table, seconds = export(args.project.resolve(), dataset)
        share = args.repro_seconds / len(args.datasets) if args.repro_seconds else None
        results["datasets"][dataset] = {"seconds": seconds, "table": table, "targets": targets(table, seconds, share)}
        args.out.mkdir(parents=True, exist_ok=True)  # after each dataset: an interrupted run keeps what it measured
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "results.md").write_text(markdown(results))


if __name__ == "__main__":
    main()

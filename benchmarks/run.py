"""Measure the pipeline's speed on this machine, side by side, and write results.{md,json}.

    python -m benchmarks.run                 # full run, ~15 min on 2 CPU cores
    python -m benchmarks.run --smoke --out /tmp/bench   # seconds; what the test suite runs

Every number is a median of several repeats taken in this one run, so ratios compare
like with like. Nothing here is a pass/fail test: targets are reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, machine, result_line, run_module, timed, warm_up
from cifar_pipeline.training.hardware import cpu_has_fast_bfloat16
from testkit.archives import build_archive
from testkit.project import create, edit_params, environment

# noop_targets: what the no-op `dvc status` and `dvc repro` are timed on ([]: the whole pipeline).
FULL = {
    "train_images": 2048, "epochs": 5, "batch_size": 128, "train_per_file": 10_000, "test": 10_000, "repeats": 3,
    "noop_targets": [],
}  # fmt: skip
# The smoke run checks the code paths: one dataset's project for the no-op repro, each command timed once.
SMOKE = {
    "train_images": 128, "epochs": 2, "batch_size": 32, "train_per_file": 200, "test": 200, "repeats": 1,
    "noop_targets": ["normalize@cifar10"],  # the same commands without a training to wait for
}  # fmt: skip
TARGETS = {
    "steady_img_s": 200.0,
    "epoch_wall_within": 0.03,
    "ratio_vs_baseline": 2.4,
    "data_stage_s": 10.0,
    "data_stage_rss_gb": 3.0,
    "noop_repro_minus_status_s": 2.0,
}


def train_speed(size: dict) -> list[dict]:
    base = {"images": size["train_images"], "batch_size": size["batch_size"], "epochs": size["epochs"]}
    configs = [
        ("ours (train stage defaults)", {"pipeline": "ours"}, {}),
        ("fast network (README's airbench recipe)", {"pipeline": "ours", "network": "fast"}, {}),
        ("ours, oneDNN forced on", {"pipeline": "ours"}, {"TF_ENABLE_ONEDNN_OPTS": "1"}),
        ("ours, oneDNN forced off", {"pipeline": "ours"}, {"TF_ENABLE_ONEDNN_OPTS": "0"}),
        ("ours, 1 inter-op thread", {"pipeline": "ours"}, {"TF_NUM_INTEROP_THREADS": "1"}),
        ("ours, mixed precision forced off (float32)", {"pipeline": "ours", "mixed_precision": False}, {}),
        # bfloat16 is emulated on CPUs without AVX512-BF16: minutes per epoch, so a short run there
        (
            "ours, mixed precision forced on",
            {"pipeline": "ours", "mixed_precision": True}
            | ({} if cpu_has_fast_bfloat16() else {"images": 384, "epochs": 2}),
            {},
        ),
        ("ours, XLA jit_compile", {"pipeline": "ours", "jit_compile": True}, {}),
        ("ours, tf.data autotune on", {"pipeline": "ours", "autotune": True}, {}),
        ("ours, no augmentation", {"pipeline": "ours", "augment": False}, {}),
        (
            "seed-style ImageDataGenerator, oneDNN on",
            {"pipeline": "imagedatagenerator", "mixed_precision": False},
            {"TF_ENABLE_ONEDNN_OPTS": "1"},
        ),
        # The baseline is the seed as it ran: legacy generator, float32, TensorFlow's own defaults.
        (
            "seed-style ImageDataGenerator",
            {"pipeline": "imagedatagenerator", "mixed_precision": False},
            {"TF_ENABLE_ONEDNN_OPTS": "0"},
        ),
    ]
    if size is SMOKE:  # the code paths, not the comparisons: both networks and the baseline only
        configs = [configs[0], configs[1], configs[-1]]
    if size is not SMOKE:  # a smoke run measures nothing worth a warm CPU
        warm_up(20)
    results = []
    for name, config, env in configs:
        config = base | config
        if size is SMOKE:
            config["images"] = base["images"]
        results.append(measure_training(name, config, env))
    return results


def measure_training(name: str, config: dict, env: dict[str, str]) -> dict:
    """One `benchmarks.train_speed` configuration in its own process (TF reads its env vars at import)."""
    print(f"  training speed: {name} ...", flush=True)
    out = run_module("train_speed", json.dumps(config), env=environment() | env)
    return {"name": name, **result_line(out, name)}


def data_stages(size: dict, work: Path) -> dict:
    archive = work / "cifar-10-binary.tar.gz"
    md5 = build_archive(archive, "cifar10", train_per_file=size["train_per_file"], test=size["test"])
    project = work / "stages"
    project.mkdir()
    (project / "params.yaml").write_text(
        (ROOT / "params.yaml")
        .read_text()
        .replace("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", str(archive))
        .replace("c32a1d4ab5d03f1284b67883e8d87530", md5)
    )
    (project / "recipes.yaml").write_text((ROOT / "recipes.yaml").read_text())  # params.yaml names one
    env = environment() | {"PYTHONPATH": str(ROOT)}  # this checkout's stages, run in the data folder
    stages = {
        "download (parse archive)": ["download", "cifar10", "data/raw/cifar10"],
        "split": ["split", "cifar10", "data/raw/cifar10", "data/split/cifar10"],
        "normalize": ["normalize", "data/split/cifar10", "data/stats/cifar10.json"],
    }
    results = {}
    for name, (stage, *args) in stages.items():
        command = [sys.executable, "-m", f"stages.{stage}", *args]
        runs = [timed(command, project, env) for _ in range(size["repeats"])]
        results[name] = {"wall_s": statistics.median(r[0] for r in runs), "peak_rss_gb": max(r[1] for r in runs)}
        print(f"  {name}: {results[name]}", flush=True)
    results["images"] = 5 * size["train_per_file"] + size["test"]
    return results


# (training images per file, test images) for the no-op `dvc repro` project: the fewest the
# split stage accepts (a training and a validation image of every class), as in tests/conftest.py.
NOOP_ARCHIVES = {"cifar10": (60, 60), "cifar100": (1000, 100)}


def dvc_noop(size: dict, work: Path) -> dict:
    archives = {}
    datasets = ("cifar10",) if size is SMOKE else tuple(NOOP_ARCHIVES)
    for dataset in datasets:
        train, test = NOOP_ARCHIVES[dataset]
        path = work / f"{dataset}.tar.gz"
        archives[dataset] = {"url": str(path), "md5": build_archive(path, dataset, train_per_file=train, test=test)}
    project = create(work / "project", archives)
    edit_params(project, lambda params: params.update(datasets=list(datasets)))
    targets = size["noop_targets"]
    subprocess.run(["dvc", "repro", *targets], cwd=project, env=environment(), check=True, capture_output=True)
    results: dict = {"targets": targets}
    for command in ("status", "repro"):
        repeats = 1 if size is SMOKE else max(3, size["repeats"] + 2)
        walls = [timed(["dvc", command, *targets], project)[0] for _ in range(repeats)]
        results[f"dvc {command}"] = statistics.median(walls)
    results["difference_s"] = results["dvc repro"] - results["dvc status"]
    return results


def mlflow_cost(work: Path, repeats: int = 20) -> float:
    """Median seconds of one epoch's `log_metrics` call (9 metrics) against a local SQLite store."""
    code = f"""
import mlflow, time, statistics
mlflow.set_tracking_uri("sqlite:///{work}/bench.db")
with mlflow.start_run():
    times = []
    for step in range({repeats}):
        metrics = {{k: 0.5 for k in ("loss", "accuracy", "top5_accuracy", "val_loss", "val_accuracy",
                                      "val_top5_accuracy", "learning_rate", "epoch_time_s", "images_per_second")}}
        start = time.perf_counter(); mlflow.log_metrics(metrics, step=step); times.append(time.perf_counter() - start)
print(statistics.median(times[1:]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment(), check=True)
    return float(out.stdout.strip().splitlines()[-1])


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {m['cpu']} ({', '.join(m['simd'])}), {m['cores']} cores, {m['memory_gib']} GiB, "
        f"{m['gpus']} GPU(s); Python {m['python']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}, "
        f"MLflow {m['mlflow']}. Mode: {results['mode']}. Taken {results['date']}.",
        "",
        "## Training: both networks (CIFAR-10 shape), medians over epochs 2..N",
        "",
        "Steady = median batch; epoch wall = images / time from one epoch's start to the next (so a stall "
        "closing an iterator counts); 'time outside steady batches' = 1 - epoch img/s / that epoch's "
        "steady img/s, the cost of stalls and epoch set-up.",
        "",
        "| setup | compute dtype | steady img/s | epoch wall img/s | time outside steady batches | "
        "slowest later epoch s | first-epoch overhead s | GFLOP/s | of peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["training"]:
        overhead = r["first_epoch_overhead_s"]
        slowest = max(r["epoch_walls_s"][1:] or r["epoch_walls_s"])
        lines.append(
            f"| {r['name']} | {r['dtype_policy']} | {r['steady_img_s']:.0f} | {r['epoch_wall_img_s']:.0f} | "
            f"{r['wall_gap']:+.1%} | "
            f"{slowest:.1f} (median {statistics.median(r['epoch_walls_s'][1:] or r['epoch_walls_s']):.1f}) | "
            f"{'-' if overhead is None else f'{overhead:.1f}'} | {r['achieved_gflops']:.1f} | "
            f"{r['fraction_of_peak']:.0%} |"
        )
    return "\n".join([*lines, *other_sections(results)])


def other_sections(results: dict) -> list[str]:
    """The peak, data stage, DVC/MLflow and target sections, after the training table."""
    ours = results["training"][0]
    peaks = ours["peak_gflops"]
    return [
        "",
        f"Peak measured in the same process as 'ours': matmul {peaks['matmul']:.0f} GFLOP/s, conv {peaks['conv']:.0f} "
        f"GFLOP/s in float32; {peaks.get('matmul_bfloat16', 0):.0f} and {peaks.get('conv_bfloat16', 0):.0f} in "
        "bfloat16 (*of peak* is against the step's own compute dtype); "
        f"training cost {ours['train_mflop_per_image']:.0f} MFLOP per image (3x forward) for the seed "
        f"network, {results['training'][1]['train_mflop_per_image']:.0f} for the fast one. "
        f"Ours / seed-style baseline: **{results['ratio_vs_baseline']:.2f}x**.",
        "",
        f"## Data stages at full scale ({results['data_stages']['images']:,} synthetic images, official layout)",
        "",
        "| stage | wall s | peak RSS GB |",
        "|---|---|---|",
        *[
            f"| {k} | {v['wall_s']:.1f} | {v['peak_rss_gb']:.2f} |"
            for k, v in results["data_stages"].items()
            if isinstance(v, dict)
        ],
        "",
        "## DVC and MLflow overhead",
        "",
        f"- `dvc status`: {results['dvc']['dvc status']:.2f} s; `dvc repro` with nothing to do: "
        f"{results['dvc']['dvc repro']:.2f} s (difference {results['dvc']['difference_s']:+.2f} s).",
        f"- MLflow `log_metrics` per epoch: {results['mlflow_log_s'] * 1000:.1f} ms = "
        f"{results['mlflow_fraction_full_epoch']:.4%} of a full CIFAR-10 epoch (45,000 images at the steady rate).",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        *[f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in results["targets"]],
        "",
    ]


def derived(results: dict) -> dict:
    """The ratios and each target's measured value and verdict, from the measured parts."""
    ours, baseline = results["training"][0], results["training"][-1]
    ratio = ours["steady_img_s"] / baseline["steady_img_s"]
    wall_gap = ours["wall_gap"]
    stages = [v for v in results["data_stages"].values() if isinstance(v, dict)]
    stage_wall, stage_rss = max(v["wall_s"] for v in stages), max(v["peak_rss_gb"] for v in stages)
    difference = results["dvc"]["difference_s"]
    return {
        "ratio_vs_baseline": ratio,
        "mlflow_fraction_full_epoch": results["mlflow_log_s"] / (45_000 / ours["steady_img_s"]),
        "targets": [
            (
                f"steady >= {TARGETS['steady_img_s']:.0f} img/s",
                f"{ours['steady_img_s']:.0f}",
                ours["steady_img_s"] >= TARGETS["steady_img_s"],
            ),
            (
                f"epoch wall within {TARGETS['epoch_wall_within']:.0%} of steady",
                f"{wall_gap:+.1%}",
                wall_gap <= TARGETS["epoch_wall_within"],
            ),
            (
                f">= {TARGETS['ratio_vs_baseline']}x seed-style baseline",
                f"{ratio:.2f}x",
                ratio >= TARGETS["ratio_vs_baseline"],
            ),
            (
                f"split/normalize/parse <= {TARGETS['data_stage_s']:.0f} s each",
                f"max {stage_wall:.1f} s",
                stage_wall <= TARGETS["data_stage_s"],
            ),
            (
                f"peak RSS <= {TARGETS['data_stage_rss_gb']:.0f} GB",
                f"max {stage_rss:.2f} GB",
                stage_rss <= TARGETS["data_stage_rss_gb"],
            ),
            (
                f"no-op repro <= status + {TARGETS['noop_repro_minus_status_s']:.0f} s",
                f"{difference:+.2f} s",
                difference <= TARGETS["noop_repro_minus_status_s"],
            ),
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the code, measures nothing useful")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    size = SMOKE if args.smoke else FULL
    results: dict = {
        "mode": "smoke" if args.smoke else "full",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "sizes": size,
        "machine": machine(),
    }
    print("machine:", results["machine"], flush=True)

    def save(part: str, value) -> None:
        """Keep each part as it finishes: a later part that fails loses nothing measured before it."""
        results[part] = value
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results | {"complete": False}, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="cifar-bench-") as tmp:
        work = Path(tmp)
        save("training", train_speed(size))
        results["machine"]["gpus"] = results["training"][0]["gpus"]
        (work / "data").mkdir()
        save("data_stages", data_stages(size, work / "data"))
        (work / "dvc").mkdir()
        save("dvc", dvc_noop(size, work / "dvc"))
        save("mlflow_log_s", mlflow_cost(work))
    results["complete"] = True
    results |= derived(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()

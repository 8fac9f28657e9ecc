"""Disk and memory footprint of the pipeline at full CIFAR-10 scale, code versions side by side.

    python -m benchmarks.footprint                                  # this checkout, ~10 min on 2 cores
    python -m benchmarks.footprint --variant before=/path/to/old/checkout --variant after=.
    python -m benchmarks.footprint --smoke --out /tmp/fp            # seconds; what the test suite runs

Per code version, in a fresh copy of that version's project (its own git + DVC repo) fed a
synthetic archive in the official binary layout (60,000 images, as the real CIFAR-10):
- DVC cache growth per split change: `du` of `.dvc/cache` after `dvc repro normalize@cifar10`,
  then after `split.seed` changes and the same command reruns, against the size of the uint8
  split folder itself;
- train-stage peak RSS: `dvc repro train@cifar10` with the version's own model and recipe for
  `--epochs` epochs, peak resident memory of the largest process in that tree (wait4);
- steady training speed: the train stage's own `images_per_second` of its last epoch (the
  first includes graph building), as logged to MLflow.
Targets (issue 8): peak RSS <= 1.5 GB; cache growth per split change <= the uint8 split.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, machine, machine_line, timed
from testkit.archives import build_archive
from testkit.project import create, edit_params, run

FULL = {"train_per_file": 10_000, "test": 10_000, "epochs": 2}
SMOKE = {"train_per_file": 60, "test": 60, "epochs": 1}
TARGETS = {"train_peak_rss_gb": 1.5}


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def last_epoch_speed(project: Path) -> float:
    code = (
        "import mlflow, sys; from mlflow.tracking import MlflowClient\n"
        f"mlflow.set_tracking_uri('sqlite:///{project / 'mlflow.db'}')\n"
        "c = MlflowClient(); e = c.get_experiment_by_name('cifar')\n"
        "r = c.search_runs([e.experiment_id], order_by=['attributes.start_time DESC'])[0]\n"
        "h = sorted(c.get_metric_history(r.info.run_id, 'images_per_second'), key=lambda m: m.step)\n"
        "print(h[-1].value)"
    )
    return float(run(project, sys.executable, "-c", code).stdout.split()[-1])


def measure(name: str, code: Path, archive: Path, md5: str, size: dict, work: Path) -> dict:
    print(f"{name}: {code}", flush=True)
    train = {"epochs": size["epochs"]}
    if size is SMOKE:
        train = {
            "epochs": 1,
            "batch_size": 32,
            "model": {"filters": [4], "dropouts": [0.1], "dense_units": 8, "activation": "relu"},
        }
    project = create(work / name, {"cifar10": {"url": archive.as_uri(), "md5": md5}}, code=code, train=train)
    edit_params(project, lambda p: p.update(datasets=["cifar10"]))
    cache = project / ".dvc/cache"
    run(project, "dvc", "repro", "normalize@cifar10")
    first = folder_bytes(cache)
    split = folder_bytes(project / "data/split/cifar10")
    edit_params(project, lambda p: p["split"].update(seed=p["split"]["seed"] + 1))
    run(project, "dvc", "repro", "normalize@cifar10")
    growth = folder_bytes(cache) - first
    print(f"  cache {first / 1e6:.0f} MB, +{growth / 1e6:.0f} MB per split change (split {split / 1e6:.0f} MB)")
    wall, rss = timed(["dvc", "repro", "train@cifar10"], project)
    speed = last_epoch_speed(project)
    print(f"  train: peak RSS {rss:.2f} GB, last epoch {speed:.0f} img/s, {wall:.0f} s", flush=True)
    return {
        "name": name,
        "code": str(code),
        "commit": run(code, "git", "rev-parse", "--short", "HEAD", check=False).stdout.strip(),
        "cache_after_first_repro_mb": first / 1e6,
        "cache_growth_per_split_change_mb": growth / 1e6,
        "uint8_split_mb": split / 1e6,
        "train_peak_rss_gb": rss,
        "last_epoch_img_s": speed,
        "train_wall_s": wall,
    }


def markdown(results: dict) -> str:
    lines = [
        "# Footprint at full CIFAR-10 scale",
        "",
        f"Machine: {results['machine']}. Data: synthetic archive in the official binary layout, "
        f"{results['images']:,} images. Train: each version's own params.yaml model and recipe, "
        f"{results['epochs']} epoch(s). Taken {results['date']} by `python -m benchmarks.footprint`.",
        "",
        "| code | DVC cache after first repro to normalize | cache growth per split change | uint8 split | "
        "train peak RSS | last-epoch img/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["variants"]:
        lines.append(
            f"| {r['name']} ({r['commit']}) | {r['cache_after_first_repro_mb']:.0f} MB | "
            f"{r['cache_growth_per_split_change_mb']:.0f} MB | {r['uint8_split_mb']:.0f} MB | "
            f"{r['train_peak_rss_gb']:.2f} GB | {r['last_epoch_img_s']:.0f} |"
        )
    lines += ["", f"Targets: train peak RSS <= {TARGETS['train_peak_rss_gb']} GB; cache growth <= uint8 split."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variant", action="append", metavar="NAME=PATH", help="a checkout to measure (default: this one)"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny archive and model: checks the code path only")
    parser.add_argument("--epochs", type=int, help="training epochs (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/footprint")
    args = parser.parse_args(argv)
    size = SMOKE if args.smoke else dict(FULL)
    if args.epochs and not args.smoke:
        size["epochs"] = args.epochs
    variants = [v.split("=", 1) for v in args.variant or [f"this checkout={ROOT}"]]
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        work = Path(tmp)
        archive = work / "cifar-10-binary.tar.gz"
        md5 = build_archive(archive, "cifar10", train_per_file=size["train_per_file"], test=size["test"])
        results = {
            "machine": machine_line(machine()),
            "date": time.strftime("%Y-%m-%d"),
            "images": 5 * size["train_per_file"] + size["test"],
            "epochs": size["epochs"],
            "variants": [measure(name, Path(path).resolve(), archive, md5, size, work) for name, path in variants],
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()

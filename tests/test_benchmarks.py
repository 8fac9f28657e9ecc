"""A smoke run of the benchmark code (tiny sizes): it must run and write both reports.

The numbers it produces mean nothing at this size; speed targets live in benchmarks/,
never in tests.
"""

import json
import subprocess
import sys

import pytest

from project import ROOT, environment

pytestmark = pytest.mark.e2e


def test_benchmark_smoke_run_writes_markdown_and_json(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/run.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["mode"] == "smoke"
    names = [r["name"] for r in data["training"]]
    assert names == ["ours (train stage defaults)", "seed-style ImageDataGenerator"]
    for run in data["training"]:
        assert run["steady_img_s"] > 0 and run["peak_gflops"]["matmul"] > 0
        assert 300 < run["train_mflop_per_image"] < 350  # the seed model: ~108 MFLOP forward, x3
    assert set(data["data_stages"]) >= {"download (parse archive)", "split", "normalize"}
    assert data["dvc"]["dvc repro"] > 0 and data["mlflow_log_s"] > 0
    report = (tmp_path / "results.md").read_text()
    assert "## Targets" in report and "seed-style ImageDataGenerator" in report

"""Smoke runs of the benchmark code (tiny sizes): each must run and write its reports.

The numbers it produces mean nothing at this size; speed targets live in benchmarks/,
never in tests.
"""

import json
import subprocess
import sys

import pytest

from testkit.project import ROOT, environment

pytestmark = pytest.mark.e2e


def run_benchmark(name: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m benchmarks.<name>` at its smoke size: the code paths, not the numbers."""
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=environment(),
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_benchmark_smoke_run_writes_markdown_and_json(tmp_path):
    run_benchmark("run", "--smoke", "--out", str(tmp_path))
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["mode"] == "smoke" and data["complete"]
    names = [r["name"] for r in data["training"]]
    assert names == [
        "ours (train stage defaults)",
        "fast network (README's airbench recipe)",
        "seed-style ImageDataGenerator",
    ]
    for run in data["training"]:
        assert run["steady_img_s"] > 0 and run["peak_gflops"]["matmul"] > 0 and run["fraction_of_peak"] > 0
    seed, fast, baseline = (run["train_mflop_per_image"] for run in data["training"])
    assert 300 < seed < 350 and 300 < baseline < 350  # the seed model: ~108 MFLOP forward, x3
    assert 650 < fast < 760  # airbench's shape: ~236 MFLOP forward, x3
    assert set(data["data_stages"]) >= {"download (parse archive)", "split", "normalize"}
    # the no-op commands ran, on archives the split stage accepts (the smoke run times the data stages')
    assert data["dvc"]["dvc repro"] > 0 and data["mlflow_log_s"] > 0
    report = (tmp_path / "results.md").read_text()
    assert "## Targets" in report and "seed-style ImageDataGenerator" in report


def run_accuracy_benchmark(out, archive, *extra: str) -> subprocess.CompletedProcess:
    return run_benchmark("accuracy", "--quick", "--archive", str(archive), "--out", str(out), *extra)


def test_accuracy_benchmark_quick_run_compares_every_contender(tmp_path, archives):
    """One seed each: aggregating several seeds is the pure report code, checked on the committed runs below."""
    run_accuracy_benchmark(tmp_path, archives["cifar10"][0], "--seeds", "1")
    data = json.loads((tmp_path / "results.json").read_text())
    assert list(data["summary"]) == [
        "seed port (literal)",
        "seed network, defaults",
        "seed network, fast recipe",
        "fast network (airbench)",
    ]
    for name, summary in data["summary"].items():
        assert summary["seeds"] == [1], name
        mean, std = summary["test_accuracy"]
        assert 0.0 <= mean <= 1.0 and std >= 0.0
        runs = data["runs"][name]
        assert all(len(run["history"]["val_accuracy"]) == data["epochs"] for run in runs)
    # The seed port trains in float32 with its own input path; the pipeline with its params.
    assert data["summary"]["seed port (literal)"]["dtype_policy"] == "float32"
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    report = (tmp_path / "results.md").read_text()
    assert "| seed port (literal) |" in report and "| fast network (airbench) |" in report
    assert "| seed network, fast recipe | seed network, defaults |" in report  # the one-difference table
    assert "## Time to accuracy" in report and "## Projection to the full training set" in report
    fast = data["summary"]["fast network (airbench)"]
    assert (
        fast["test_views"] == 2 and fast["forward_mflop"] > data["summary"]["seed network, defaults"]["forward_mflop"]
    )
    assert set(fast["time_to"]) == {"0.55", "0.65", "0.75"} and fast["images_per_second"] > 0


def test_the_accuracy_report_recomputes_the_committed_three_seed_results(tmp_path):
    """Mean ± std over seeds, time to accuracy and the Markdown, from the committed runs (3 seeds
    each): what the quick run, with one seed, leaves to the report code."""
    from benchmarks.accuracy_report import markdown, plot, summarise

    out = ROOT / "benchmarks/results/accuracy"
    data = json.loads((out / "results.json").read_text())

    def comparable(summary: dict) -> dict:  # runs from before CPU time was recorded count it as 0
        summary = json.loads(json.dumps(summary))
        for hit in summary["time_to"].values():
            if not hit.get("cpu_seconds"):
                hit.pop("cpu_seconds", None)
        return summary

    for name, runs in data["runs"].items():
        assert len(runs) > 1 and comparable(summarise(runs)) == comparable(data["summary"][name]), name
    assert markdown(data) == (out / "results.md").read_text()
    plot(data["runs"], tmp_path / "curves.png")  # per-epoch means over the seeds
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_screening_never_reads_the_test_set(tmp_path, archives):
    result = run_accuracy_benchmark(
        tmp_path, archives["cifar10"][0], "--seeds", "1", "--screen", "train.label_smoothing=0.1"
    )
    table = (tmp_path / "screening.md").read_text()
    assert "| `train.label_smoothing=0.1` |" in table
    assert "test_accuracy" not in result.stdout and "test" not in table.lower()
    assert not (tmp_path / "results.json").exists()


def test_full_scale_benchmark_gives_the_seed_contenders_the_fast_recipes_time_and_resumes(tmp_path, archives):
    """CIFAR-100 (fine labels) at smoke size: the fast recipe for 1 epoch, then the seed recipe
    stopped at the fast run's training time; a second call skips both; results.md has the tables."""
    args = ("--dataset", "cifar100", "--archive", str(archives["cifar100"][0]), "--out", str(tmp_path))
    first = run_benchmark("full_scale", *args, "--only", "fast", "seed", "--seeds", "1", "--epochs", "1")
    runs = tmp_path / "cifar100" / "runs"
    fast, seed = (json.loads((runs / f"{name}-seed1.json").read_text()) for name in ("fast", "seed"))
    assert fast["train_params"]["model.kind"] == "airbench" and len(fast["epoch_seconds"]) == 1
    assert seed["train_params"]["model.kind"] == "seed" and seed["config"]["budget_s"] == sum(fast["epoch_seconds"])
    # Stopped by the budget: every epoch but the last was expected (by the mean so far) to end within it.
    kept = seed["epoch_seconds"][:-1]
    assert 1 <= len(seed["epoch_seconds"]) < 200
    assert not kept or sum(kept) + sum(kept) / len(kept) <= seed["config"]["budget_s"]
    assert fast["label_mode"] == "fine" and fast["images"] == {"train": 900, "val": 100, "test": 100}
    assert all(len(r["epoch_cpu_seconds"]) == len(r["epoch_seconds"]) for r in (fast, seed))
    assert "test accuracy" in first.stdout
    again = run_benchmark("full_scale", *args, "--only", "fast", "seed", "--seeds", "1", "--epochs", "1")
    assert again.stdout.count(": done (") == 2 and "test accuracy" not in again.stdout
    report = (tmp_path / "results.md").read_text()
    assert "## cifar100\n" in report and "| fast recipe (its own epochs) | **" in report
    assert "### Time to validation accuracy" in report and "val ≥ 0.7 |" in report
    # Screening: validation only, kept apart from the runs, on the report with the recipe it changes.
    recipe = "train.lookahead=true train.epochs=1"
    screened = run_benchmark("full_scale", *args, "--screen", recipe)
    [screen] = (tmp_path / "cifar100" / "screening").glob("*.json")
    result = json.loads(screen.read_text())
    assert result["train_params"]["lookahead"] is True and "test_accuracy" not in result
    assert "val accuracy" in screened.stdout and "test accuracy" not in screened.stdout
    report = (tmp_path / "results.md").read_text()
    assert f"| `{recipe}` |" in report and "| `(none: the fast recipe, seed 1)` |" in report


def test_the_readme_and_docs_full_scale_tables_are_the_committed_results():
    """One place for each number: README and docs/accuracy.md copy summary.md, which
    `full_scale.py --render` writes from the committed runs."""
    from benchmarks.full_scale import summary_markdown

    out = ROOT / "benchmarks/results/full_scale"
    summary = (out / "summary.md").read_text()
    assert summary == summary_markdown(out)
    for document in ("README.md", "docs/accuracy.md"):
        text = (ROOT / document).read_text()
        for table in summary.strip().split("\n\n"):
            assert table in text, f"{document}: rerun `python -m benchmarks.full_scale --render` and copy summary.md"


def test_step_share_benchmark_smoke_run_reports_the_share_of_the_dtypes_peak(tmp_path):
    run_benchmark("step_share", "--smoke", "--out", str(tmp_path))
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert [r["config"]["batch_size"] for r in runs] == [32, 32] and all(r["config"]["network"] == "fast" for r in runs)
    assert all(r["fraction_of_peak"] > 0 and r["achieved_gflops"] > 0 for r in runs)
    assert "| airbench94 recipe, batch 128 |" in (tmp_path / "results.md").read_text()


def test_step_profile_smoke_run_groups_the_kernels_and_accounts_them_against_the_roofs(tmp_path):
    run_benchmark("step_profile", "--smoke", "--out", str(tmp_path))
    fused, keras_norm = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert fused["steady_img_s"] > 0 and keras_norm["steady_img_s"] > 0
    # the profile saw the convolutions and which BatchNormalization ran: fused kernels, or Keras's ops
    assert {"conv forward", "conv backward (weights)", "BatchNorm", "GELU"} <= set(fused["kernel_s_per_step"])
    assert fused["work_per_step"]["conv forward"]["flops"] > 0 and fused["work_per_step"]["BatchNorm"]["bytes"] > 0
    assert fused["peak_gflops"] > 0 and fused["bandwidth_gb_s"] > 0
    text = (tmp_path / "results.md").read_text()
    assert "| conv backward (weights) |" in text and "**Limit**:" in text


def test_footprint_benchmark_smoke_run_measures_cache_memory_and_speed(tmp_path):
    run_benchmark("footprint", "--smoke", "--out", str(tmp_path))
    data = json.loads((tmp_path / "results.json").read_text())
    [variant] = data["variants"]
    assert variant["name"] == "this checkout" and data["images"] == 360
    # a split change stores the new split (and, since issue 8, nothing bigger)
    assert 0 < variant["cache_growth_per_split_change_mb"] <= variant["uint8_split_mb"] * 1.05
    assert 0.1 < variant["train_peak_rss_gb"] < 8 and variant["last_epoch_img_s"] > 0
    assert "| this checkout (" in (tmp_path / "results.md").read_text()

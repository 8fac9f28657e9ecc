"""Stage outputs: only folders the pipeline made are replaced; checks can hold an output back."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from cifar_pipeline.core import stage_runner
from cifar_pipeline.core.files import MARKER, OutputError, atomic_dir, atomic_file, checked_commits
from cifar_pipeline.core.params import ParamsError, load_params
from cifar_pipeline.core.resolved_train import check_resolved_train, write_resolved_train
from testkit.project import ROOT


def test_a_stage_folder_carries_the_marker_and_can_be_replaced(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.npy").write_text("1")
    assert (out / MARKER).is_file()
    with atomic_dir(out) as tmp:
        (tmp / "b.npy").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "b.npy"]


def test_an_empty_folder_is_replaced(tmp_path):
    (tmp_path / "out").mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.npy").write_text("1")
    assert (tmp_path / "out/a.npy").is_file()


@pytest.mark.parametrize("target", [".", "data", "theirs"])
def test_a_folder_someone_else_made_is_refused_before_any_work_and_kept(tmp_path, monkeypatch, target):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data/.gitignore").write_text("/raw\n")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs/notes.txt").write_text("mine")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    worked = []
    refused = rf"refusing to replace {target}: it is a folder this pipeline did not make"
    with pytest.raises(OutputError, match=refused), atomic_dir(Path(target)):
        worked.append(True)
    assert not worked
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "out").write_text("someone's file")
    with pytest.raises(OutputError, match="it is a file this pipeline did not make"), atomic_dir(tmp_path / "out"):
        pass
    assert (tmp_path / "out").read_text() == "someone's file"


def test_a_write_error_without_a_path_gets_the_outputs_path(tmp_path):
    with pytest.raises(OSError) as caught, atomic_dir(tmp_path / "raw"):
        raise OSError(errno.ENOSPC, "No space left on device")  # as numpy's writes raise it
    assert caught.value.filename == str(tmp_path / "raw")
    assert "no space left on the device writing" in stage_runner.file_system_problem(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_during_a_copy_names_the_destination_not_the_source(tmp_path, full_disk):
    """MLflow's local store copies each artifact from a temporary file; the copy's error named
    that temporary file, not the store that was full."""
    source = tmp_path / "figure.png"
    source.write_bytes(os.urandom(1_000_000))
    target = full_disk / "mlruns/1/abc/artifacts/figure.png"
    target.parent.mkdir(parents=True)
    with pytest.raises(OSError) as caught:
        shutil.copyfile(source, target)
    line = stage_runner.file_system_problem(caught.value)
    assert line.startswith(f"no space left on the device writing {target};") and str(source) not in line
    assert "it is MLflow's artifact store" in line


@pytest.mark.parametrize(
    ("where", "hint"),
    [
        ("{tmp}/tmpab12/model.keras", "it is the system temp folder: free space there, or set TMPDIR"),
        ("/srv/project/mlruns/1/abc/artifacts/plots/a.png", "it is MLflow's artifact store: free space on that disk"),
        ("/srv/project/models/cifar10", "free space on that disk and run `dvc repro` again"),
    ],
)
def test_a_full_disk_says_what_the_place_is_and_what_to_do(where, hint):
    err = OSError(
        errno.ENOSPC, "No space left on device", "/elsewhere/src", None, where.format(tmp=tempfile.gettempdir())
    )
    line = stage_runner.file_system_problem(err)
    assert line.startswith(f"no space left on the device writing {where.format(tmp=tempfile.gettempdir())};")
    assert hint in line


@pytest.fixture
def project_root(tmp_path, monkeypatch):
    """A folder with the project's dvc.yaml and params.yaml, as the working folder."""
    monkeypatch.chdir(tmp_path)
    for name in ("dvc.yaml", "params.yaml", "recipes.yaml"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    return tmp_path


def test_params_changed_during_the_stage_keep_its_output_back(project_root):
    tmp_path = project_root
    with checked_commits(stage_runner.params_unchanged("recipe.py", "cifar10")):
        text = (tmp_path / "params.yaml").read_text()
        (tmp_path / "params.yaml").write_text(text.replace("learning_rate: recipe", "learning_rate: 1e-4"))
        changed = r"train.learning_rate 'recipe' -> 0.0001; .*run `dvc repro` again"
        with pytest.raises(stage_runner.ParamsChanged, match=changed), atomic_dir(tmp_path / "models/cifar10") as tmp:
            (tmp / "model.keras").write_text("weights")
        assert not (tmp_path / "models/cifar10").exists()
        with pytest.raises(stage_runner.ParamsChanged), atomic_file(tmp_path / "plots.csv") as tmp:
            tmp.write_text("epoch\n")
        assert not (tmp_path / "plots.csv").exists()
        # bookkeeping (checkpoints) is not an output: it is never held back
        with atomic_file(tmp_path / "state.json", output=False) as tmp:
            tmp.write_text("{}")
        assert (tmp_path / "state.json").is_file()
    with atomic_file(tmp_path / "plots.csv") as tmp:  # the check ends with its block
        tmp.write_text("epoch\n")
    assert (tmp_path / "plots.csv").is_file()


def test_the_train_stage_refuses_values_the_recipe_stage_did_not_resolve(project_root):
    """The train stage depends on the recipe stage's file, not on params.yaml's train values: it
    trains only with the values that file holds, so dvc.lock never pairs it with another model."""
    tmp_path = project_root
    resolved = tmp_path / "data/recipes/cifar10.json"
    params = load_params(dataset="cifar10")
    write_resolved_train(params, "cifar10", resolved)
    check_resolved_train(params, "cifar10", resolved)
    recipes = yaml.safe_load((tmp_path / "recipes.yaml").read_text())
    recipes[params.recipe]["epochs"] += 1
    (tmp_path / "recipes.yaml").write_text(yaml.safe_dump(recipes))
    changed = load_params(dataset="cifar10")
    epochs = rf"train.epochs {params.train.epochs} -> {params.train.epochs + 1}\); run `dvc repro` again"
    with pytest.raises(ParamsError, match=rf"cifar10's train values changed after the recipe stage .*{epochs}"):
        check_resolved_train(changed, "cifar10", resolved)


def test_params_another_stage_reads_may_change(project_root):
    tmp_path = project_root
    with checked_commits(stage_runner.params_unchanged("split.py", "cifar10")):
        text = (tmp_path / "params.yaml").read_text()
        (tmp_path / "params.yaml").write_text(text.replace("epochs: recipe", "epochs: 3"))
        with atomic_dir(tmp_path / "data/split/cifar10") as tmp:
            (tmp / "x.npy").write_text("1")
        assert (tmp_path / "data/split/cifar10/x.npy").is_file()

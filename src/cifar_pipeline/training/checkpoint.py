"""Resuming killed training: one checkpoint per finished epoch, committed by one atomic rename.

Keras's BackupAndRestore writes weights and metadata as two files, and knows nothing of
MLflow. Here every finished epoch saves `epoch-NNNN.keras` (weights and optimizer state),
then replaces `state.json`, the single commit point, which names that file and holds the
MLflow run id and every epoch's metrics. A kill at any moment leaves the last committed
state intact, so the next `dvc repro` continues the same MLflow run at the next epoch.

Checkpoints live in `data/.checkpoints/<dataset>-<fingerprint>/`, outside every DVC
output (DVC deletes a stage's outputs before rerunning it). The fingerprint covers the
params and input data of the run, so a changed run never resumes an unrelated one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras

from cifar_pipeline.core.errors import PipelineError
from cifar_pipeline.core.files import atomic_file, naming_errors, read_json, write_json
from cifar_pipeline.core.layout import split_identity_files
from cifar_pipeline.core.params import Params
from cifar_pipeline.core.run_identity import run_identity

CHECKPOINT_ROOT = Path("data/.checkpoints")
STATE_FILE = "state.json"


class CheckpointError(PipelineError):
    """A checkpoint file exists but cannot be used."""


@dataclass
class TrainingState:
    run_id: str
    epochs_done: int = 0
    rows: list[dict[str, float]] = field(default_factory=list)
    model_file: str | None = None


def fingerprint(dataset: str, params: Params, split_dir: Path, stats_json: Path) -> str:
    """What makes two training runs the same run: params and the exact inputs."""
    digest = hashlib.sha256()
    digest.update(json.dumps(run_identity(params, dataset), sort_keys=True, default=str).encode())
    for path in (*split_identity_files(split_dir), stats_json):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class Checkpoints:
    def __init__(self, dataset: str, key: str, root: Path = CHECKPOINT_ROOT) -> None:
        self.dataset = dataset
        self.root = root
        self.folder = root / f"{dataset}-{key}"

    def load(self) -> TrainingState | None:
        """The last committed state, or None; an unreadable `state.json` is reported and discarded."""
        path = self.folder / STATE_FILE
        if not path.is_file():
            return None
        try:
            state = TrainingState(**read_json(path))
        except (ValueError, TypeError, OSError) as err:  # empty, truncated, not JSON, wrong fields
            self.discard(f"checkpoint state {path} is unreadable ({type(err).__name__}: {err})")
            return None
        return state

    def load_model(self, state: TrainingState) -> keras.Model | None:
        """The model of the last finished epoch; `CheckpointError` if its file is missing or corrupt."""
        if not state.model_file:
            return None
        path = self.folder / state.model_file
        try:
            return keras.models.load_model(path)
        except Exception as err:  # Keras raises ValueError, OSError, zipfile errors, ... for a bad file
            raise CheckpointError(
                f"checkpoint {path} (epoch {state.epochs_done}) cannot be loaded ({type(err).__name__}: {err})"
            ) from err

    def discard(self, reason: str) -> None:
        """Say why, then remove this checkpoint folder (the pipeline made it) so training starts over."""
        print(f"warning: {reason}; discarding {self.folder} and training from scratch", file=sys.stderr)
        self.clear()

    def start(self, run_id: str) -> TrainingState:
        """A fresh run: drop this dataset's checkpoints of other configurations, record the run id."""
        if self.root.is_dir():
            for stale in self.root.glob(f"{self.dataset}-*"):
                if stale != self.folder:
                    shutil.rmtree(stale, ignore_errors=True)
        state = TrainingState(run_id=run_id)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_state(state)
        return state

    def commit(self, model: keras.Model, state: TrainingState) -> None:
        """Save the model, then switch `state.json` to it; only then drop the previous file."""
        previous = state.model_file
        state.model_file = f"epoch-{state.epochs_done:04d}.keras"
        with naming_errors(self.folder / state.model_file):  # a full disk inside Keras's zip writer names no file
            model.save(self.folder / state.model_file)
        self._write_state(state)
        if previous and previous != state.model_file:
            (self.folder / previous).unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _write_state(self, state: TrainingState) -> None:
        with atomic_file(self.folder / STATE_FILE, durable=True, output=False) as tmp:
            write_json(tmp, asdict(state))

"""One sweep worker: ask Optuna for a trial, run it as a DVC experiment in its own temporary
workspace (`dvc exp run --temp`), tell Optuna how it ended; until the sweep has its trials.

The train stage reports each epoch to the study itself (training/trial_reporting.py), so the pruner
sees the curve while it is drawn; a pruned trial's stage stops and DVC keeps nothing of it.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
from mlflow.tracking import MlflowClient

from cifar_pipeline.core import sweep_trial
from cifar_pipeline.core.errors import PipelineError, redact
from cifar_pipeline.core.sweep_trial import PRUNED_ATTR, RUN_ATTR, STATE_TAG, SweepTrial
from cifar_pipeline.sweep.spec import Sweep, SweepError, decode, override
from cifar_pipeline.sweep.study import SWEEPS_DIR

# A worker whose trials fail this many times in a row stops: the cause is not the trial's values.
MAX_FAILURES_IN_A_ROW = 3
COUNTED = ("COMPLETE", "PRUNED", "RUNNING")  # toward the sweep's trials; failed ones are run again


class TrialFailed(PipelineError):
    """The trial's `dvc exp run` failed for a reason other than pruning."""


def experiment_name(sweep: Sweep, number: int) -> str:
    return f"{sweep.name}-{number}"


def counted(study) -> int:
    import optuna

    states = tuple(getattr(optuna.trial.TrialState, state) for state in COUNTED)
    return len(study.get_trials(deepcopy=False, states=states))


def _die_with_parent() -> None:
    """In the `dvc exp run` child: SIGTERM it if the worker dies (SIGKILL included)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop_children() -> None:
    children = psutil.Process().children(recursive=True)
    for child in children:
        child.terminate()
    psutil.wait_procs(children, timeout=30)


def check_names_are_free(sweep: Sweep, root: Path, next_number: int) -> None:
    """Refuse to start when DVC experiments of this commit already hold names the study's next
    trials (`next_number` on) will take (its study was deleted, or another storage named): DVC
    would refuse each of those trials."""
    listed = subprocess.run(["dvc", "exp", "list", "--name-only"], cwd=root, capture_output=True, text=True)
    pattern = re.compile(rf"{re.escape(sweep.name)}-(\d+)")
    taken = sorted(
        name
        for name in listed.stdout.split()
        if (found := pattern.fullmatch(name)) and int(found.group(1)) >= next_number
    )
    if taken:
        names = " ".join(taken[:3]) + (" ..." if len(taken) > 3 else "")
        raise SweepError(
            f"DVC experiments of this commit already hold the names of this study's next trials ({names}), "
            f"from an earlier study of sweep {sweep.name}: remove them (`dvc exp remove {names}`), "
            "or rename the sweep"
        )


def set_state(run_id: str | None, state: str) -> None:
    if run_id:
        MlflowClient().set_tag(run_id, STATE_TAG, state)


class Worker:
    """Runs the sweep's trials in this process until the sweep has them all (or `cap` here)."""

    def __init__(self, sweep: Sweep, study, parent_run_id: str, storage_url: str, root: Path) -> None:
        self.sweep, self.study, self.parent = sweep, study, parent_run_id
        self.storage_url, self.root = storage_url, root
        self.logs = root / SWEEPS_DIR / sweep.name
        self.failures = 0
        self.ran = 0

    def run(self, cap: int | None) -> int:
        """Run trials; return how many this worker ran."""
        if counted(self.study) >= self.sweep.trials:
            print(f"sweep {self.sweep.name} already has its {self.sweep.trials} trials; nothing to run")
            return 0
        self.logs.mkdir(parents=True, exist_ok=True)
        self.study.optimize(
            self.objective,
            n_trials=cap,
            callbacks=[self.stop_when_done],
            catch=(TrialFailed,),
            gc_after_trial=False,
        )
        return self.ran

    def stop_when_done(self, study, trial) -> None:
        import optuna

        optuna.storages.fail_stale_trials(study)  # a lost worker's trial no longer counts as running
        if counted(study) >= self.sweep.trials:
            study.stop()
        if self.failures >= MAX_FAILURES_IN_A_ROW:
            study.stop()
            raise TrialFailed(
                f"{self.failures} trials in a row failed here; the last: {trial.user_attrs.get('error', '?')} "
                f"(its log: {self.logs / f'trial-{trial.number}.log'})"
            )

    def objective(self, trial) -> float:
        import optuna

        values = {d.key: decode(_suggest(trial, d)) for d in self.sweep.space}
        overrides = [override(key, value) for key, value in values.items()]
        name = experiment_name(self.sweep, trial.number)
        trial.set_user_attr("experiment", name)
        self.ran += 1
        shown = " ".join(overrides)
        print(f"trial {trial.number} ({name}): {shown}", flush=True)
        started = time.monotonic()
        log = self.logs / f"trial-{trial.number}.log"
        rc = self.run_experiment(trial, name, overrides, log)
        frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number)
        run_id = frozen.user_attrs.get(RUN_ATTR)
        minutes = (time.monotonic() - started) / 60
        if rc != 0 and PRUNED_ATTR in frozen.user_attrs:
            self.failures = 0
            set_state(run_id, "pruned")
            epoch = frozen.user_attrs[PRUNED_ATTR]
            print(f"trial {trial.number}: pruned after epoch {epoch} ({minutes:.1f} min)", flush=True)
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")
        if rc != 0:
            self.failures += 1
            set_state(run_id, "failed")
            error = last_error(log)
            trial.set_user_attr("error", error)
            print(f"trial {trial.number}: failed ({error}); log: {log}", flush=True)
            raise TrialFailed(error)
        self.failures = 0
        value = final_value(frozen, self.study)
        set_state(run_id, "complete")
        self.record_best(trial.number, value)
        print(f"trial {trial.number}: {self.sweep.metric} {value:.4f} ({minutes:.1f} min)", flush=True)
        return value

    def run_experiment(self, trial, name: str, overrides: list[str], log: Path) -> int:
        """`dvc exp run --temp` of the sweep's train stage with the trial's values; its exit code."""
        description = SweepTrial(
            storage=self.storage_url,
            sweep=self.sweep.name,
            trial_id=trial._trial_id,
            number=trial.number,
            metric=self.sweep.metric,
            dataset=self.sweep.dataset,
            parent_run_id=self.parent,
            prune_after_epochs=self.sweep.prune_after_epochs,
            prune_startup_trials=self.sweep.prune_startup_trials,
        )
        command = ["dvc", "exp", "run", "--temp", "-n", name]
        for item in overrides:
            command += ["-S", item]
        command.append(self.sweep.stage)
        env = {**os.environ, sweep_trial.ENV: description.to_env()}
        with open(log, "w", encoding="utf-8") as out:
            out.write(f"$ {' '.join(command)}\n")
            out.flush()
            process = subprocess.Popen(
                command, cwd=self.root, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
            try:
                return process.wait()
            except BaseException:  # Ctrl-C, SIGTERM: the trial's training ends KILLED, not orphaned
                _stop_children()
                raise

    def record_best(self, number: int, value: float) -> None:
        client = MlflowClient()
        client.log_metric(self.parent, f"trial_{self.sweep.metric}", value, step=number)
        try:
            best = self.study.best_trial
        except ValueError:
            return
        best_value = max(best.value, value) if self.sweep.direction == "maximize" else min(best.value, value)
        client.log_metric(self.parent, f"best_{self.sweep.metric}", best_value, step=number)


def _suggest(trial, dimension) -> Any:
    distribution = dimension.distribution()
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(dimension.key, distribution.choices)
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(
            dimension.key, distribution.low, distribution.high, log=distribution.log, step=distribution.step
        )
    return trial.suggest_int(
        dimension.key, distribution.low, distribution.high, log=distribution.log, step=distribution.step
    )


def final_value(frozen, study) -> float:
    """The metric after the trial's last epoch, as its train stage reported it. A trial whose
    stage DVC restored from its run cache (values tried before) reports nothing: it scores what
    the identical earlier trial did."""
    if frozen.intermediate_values:
        return frozen.intermediate_values[max(frozen.intermediate_values)]
    for other in study.get_trials(deepcopy=False):
        if other.number != frozen.number and other.params == frozen.params and other.value is not None:
            return other.value
    raise TrialFailed(
        "its training reported no epoch (DVC restored it from its run cache) and no earlier trial has its values"
    )


def last_error(log: Path) -> str:
    """The stage's `error:` line (or DVC's) from the trial's log, secrets masked."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "no log"
    for prefix in ("error:", "ERROR:"):
        found = [line for line in lines if line.startswith(prefix)]
        if found:
            return redact(found[0])[:400]
    return redact(lines[-1])[:400] if lines else "no output"

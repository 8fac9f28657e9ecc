"""The record of a sweep that ran (`cifar-sweep`): every trial with its values, state, validation
curve and minutes, the sweep's wall and CPU hours, and Optuna's parameter importance; as
record.json, record.md and curves.png in `--out`.

    python -m benchmarks.sweep_record --project /path/to/project --sweep cifar100-recipe

Reads the study from the project's storage (or `--storage`) and the curves from the project's
MLflow store (or MLFLOW_TRACKING_URI). CPU hours are wall hours times the cores of this
machine: run it on the machine the workers ran on.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mlflow.tracking import MlflowClient

from benchmarks.common import ROOT, machine, machine_line
from cifar_pipeline.core.sweep_trial import RUN_ATTR
from cifar_pipeline.sweep.report import importance_line
from cifar_pipeline.sweep.spec import read_sweep
from cifar_pipeline.sweep.study import default_storage


def trial_rows(study, client: MlflowClient, metric: str) -> list[dict]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        run_id = trial.user_attrs.get(RUN_ATTR)
        curve = []
        if run_id:
            history = sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)
            curve = [round(m.value, 4) for m in history]
        start, end = trial.datetime_start, trial.datetime_complete
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name.lower(),
                "value": trial.value,
                "params": trial.params,
                "curve": curve,
                "minutes": round((end - start).total_seconds() / 60, 2) if start and end else None,
                "experiment": trial.user_attrs.get("experiment"),
                "mlflow_run_id": run_id,
            }
        )
    return rows


def markdown(name: str, sweep, rows: list[dict], totals: dict, importance: str, host: dict) -> str:
    keys = [d.key for d in sweep.space]
    head = ["trial", "state", *keys, sweep.metric, "minutes", f"{sweep.metric} per epoch"]
    lines = [
        f"# Sweep `{name}`: {sweep.dataset}, {sweep.direction} {sweep.metric}",
        "",
        f"Machine: {machine_line(host)}. {totals['trials']} trials ({totals['states']}); wall "
        f"{totals['wall_hours']:.2f} h, {totals['cpu_hours']:.2f} CPU hours ({host['cores']} cores). "
        f"Pruner: median, from epoch {sweep.prune_after_epochs} after {sweep.prune_startup_trials} complete trials.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in rows:
        values = [_short(row["params"].get(key)) for key in keys]
        value = f"{row['value']:.4f}" if row["value"] is not None else "–"
        curve = " ".join(f"{v:.3f}" for v in row["curve"]) or "–"
        minutes = f"{row['minutes']:.1f}" if row["minutes"] is not None else "–"
        lines.append(f"| {row['trial']} | {row['state']} | {' | '.join(values)} | {value} | {minutes} | {curve} |")
    lines += ["", importance, ""]
    return "\n".join(lines)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def curves_figure(rows: list[dict], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        if row["curve"]:
            style = "-" if row["state"] == "complete" else ":"
            axes.plot(range(1, len(row["curve"]) + 1), row["curve"], style, label=f"{row['trial']} ({row['state']})")
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def record(project: Path, name: str, storage: str | None, out: Path, tracking_uri: str | None = None) -> dict:
    """`tracking_uri`: the MLflow store the trials logged to (default: MLFLOW_TRACKING_URI, else
    the project's mlflow.db)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep, _, _ = read_sweep(name, project)
    study = optuna.load_study(study_name=name, storage=storage or default_storage(project))
    client = MlflowClient(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project / 'mlflow.db'}")
    rows = trial_rows(study, client, sweep.metric)
    host = machine()
    wall = sum(row["minutes"] or 0 for row in rows) / 60
    states = {}
    for row in rows:
        states[row["state"]] = states.get(row["state"], 0) + 1
    totals = {
        "trials": len(rows),
        "states": ", ".join(f"{n} {state}" for state, n in sorted(states.items())),
        "wall_hours": wall,
        "cpu_hours": wall * host["cores"],
    }
    importance = importance_line(study, states.get("complete", 0))
    out.mkdir(parents=True, exist_ok=True)
    data = {"sweep": name, "definition": sweep.described(), "machine": host, "totals": totals, "trials": rows}
    data["importance"] = importance
    (out / "record.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out / "record.md").write_text(markdown(name, sweep, rows, totals, importance, host))
    curves_figure(rows, sweep.metric, out / "curves.png")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=ROOT)
    parser.add_argument("--sweep", required=True)
    parser.add_argument("--storage", help="the study's storage (default: the project's sweeps/optuna.db)")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/sweeps/<sweep>")
    args = parser.parse_args()
    out = args.out or ROOT / "benchmarks/results/sweeps" / args.sweep
    data = record(args.project.resolve(), args.sweep, args.storage, out)
    print(f"{data['totals']['trials']} trials recorded in {out}")


if __name__ == "__main__":
    main()

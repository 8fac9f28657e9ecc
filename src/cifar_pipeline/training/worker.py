"""A non-chief worker of a multi-worker training: `python -m cifar_pipeline.training.worker <dataset>`.

Run on every machine of the cluster but the chief's, in a clone of the repository with the
same data (`dvc pull`) and that machine's TF_CONFIG, while the chief runs `dvc repro`. It
reads the same params and split as the train stage, trains in step with the chief, and
writes nothing: the chief logs to MLflow and writes the DVC outputs.
"""

from __future__ import annotations

from pathlib import Path

from cifar_pipeline.core.stage_runner import run_stage
from cifar_pipeline.training.trainer import train_as_worker

# The train stage's inputs, as dvc.yaml's train command names them (tests/test_dvc_yaml.py holds them equal).
SPLIT = "data/split/{}"
STATS = "data/stats/{}.json"


def arguments(parser) -> None:
    parser.add_argument("dataset", help="the dataset the chief trains (cifar10 or cifar100)")


def body(args, params) -> None:
    params.dataset(args.dataset)  # one clear error for a dataset not in params.yaml
    train_as_worker(args.dataset, params, Path(SPLIT.format(args.dataset)), Path(STATS.format(args.dataset)))


def main() -> None:
    run_stage(
        __doc__,
        arguments,
        body,
        inputs=lambda args: {
            Path(SPLIT.format(args.dataset)): f"split@{args.dataset}",
            Path(STATS.format(args.dataset)): f"normalize@{args.dataset}",
        },
    )


if __name__ == "__main__":
    main()

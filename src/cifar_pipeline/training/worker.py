"""A non-chief worker of a multi-worker training: `python -m cifar_pipeline.training.worker <dataset>`.

Run on every machine of the cluster but the chief's, in a clone of the repository with the
same data (`dvc pull`) and that machine's TF_CONFIG, while the chief runs `dvc repro`. It
reads the same params and split as the train stage, trains in step with the chief, and
writes nothing: the chief logs to MLflow and writes the DVC outputs.
"""

from __future__ import annotations

from pathlib import Path

from cifar_pipeline.core.stage_runner import DVC_YAML, run_stage
from cifar_pipeline.core.yaml_reader import read_yaml
from cifar_pipeline.training.trainer import train_as_worker


def train_inputs(dataset: str) -> tuple[Path, Path]:
    """The split folder and statistics file dvc.yaml's train command gives the chief, read from
    dvc.yaml itself: `python -m stages.train ${item} <split> <stats> ...`."""
    command = read_yaml(DVC_YAML.read_text(encoding="utf-8"))["stages"]["train"]["do"]["cmd"].split()
    split, stats = (Path(word.replace("${item}", dataset)) for word in command[4:6])
    return split, stats


def arguments(parser) -> None:
    parser.add_argument("dataset", help="the dataset the chief trains (cifar10 or cifar100)")


def body(args, params) -> None:
    params.dataset(args.dataset)  # one clear error for a dataset not in params.yaml
    train_as_worker(args.dataset, params, *train_inputs(args.dataset))


def inputs(args) -> dict[Path, str]:
    split, stats = train_inputs(args.dataset)
    return {split: f"split@{args.dataset}", stats: f"normalize@{args.dataset}"}


def main() -> None:
    run_stage(
        __doc__,
        arguments,
        body,
        inputs=inputs,
    )


if __name__ == "__main__":
    main()

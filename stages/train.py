"""DVC stage: train one model, tracked in MLflow; writes the model folder and the loss and accuracy curves."""

from pathlib import Path

from cifar_pipeline.core.resolved_train import check_resolved_train
from cifar_pipeline.core.stage_runner import run_stage
from cifar_pipeline.training.trainer import train


def arguments(parser):
    parser.add_argument("dataset")
    parser.add_argument("split_dir", type=Path)
    parser.add_argument("stats_json", type=Path)
    parser.add_argument("resolved_json", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("loss_csv", type=Path)
    parser.add_argument("accuracy_csv", type=Path)


def body(args, params) -> None:
    check_resolved_train(params, args.dataset, args.resolved_json)
    train(args.dataset, params, args.split_dir, args.stats_json, args.model_dir, args.loss_csv, args.accuracy_csv)


if __name__ == "__main__":
    run_stage(
        __doc__,
        arguments,
        body,
        inputs=lambda args: {
            args.split_dir: f"split@{args.dataset}",
            args.stats_json: f"normalize@{args.dataset}",
            args.resolved_json: f"recipe@{args.dataset}",
        },
        outputs=lambda args: [args.model_dir],
    )

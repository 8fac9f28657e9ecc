"""DVC stage: test-set metrics, confusion matrix and per-class accuracy, into the training run."""

from pathlib import Path

from cifar_pipeline.core.stage_runner import run_stage
from cifar_pipeline.inference.evaluation import evaluate_model


def arguments(parser):
    parser.add_argument("dataset")
    parser.add_argument("split_dir", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("metrics_json", type=Path)
    parser.add_argument("confusion_csv", type=Path)
    parser.add_argument("per_class_csv", type=Path)


if __name__ == "__main__":
    run_stage(
        __doc__,
        arguments,
        lambda args, params: evaluate_model(
            args.dataset, args.split_dir, args.model_dir, args.metrics_json, args.confusion_csv, args.per_class_csv
        ),
        inputs=lambda args: {args.split_dir: f"split@{args.dataset}", args.model_dir: f"train@{args.dataset}"},
    )

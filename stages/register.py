"""DVC stage: register the evaluated model in MLflow's Model Registry and move its aliases."""

from pathlib import Path

from cifar_pipeline.core.stage_runner import run_stage
from cifar_pipeline.registry.register import register_model


def arguments(parser):
    parser.add_argument("dataset")
    parser.add_argument("split_dir", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("metrics_json", type=Path)
    parser.add_argument("export_json", type=Path)
    parser.add_argument("out_json", type=Path)


if __name__ == "__main__":
    run_stage(
        __doc__,
        arguments,
        lambda args, params: register_model(
            args.dataset,
            args.split_dir,
            args.model_dir,
            args.metrics_json,
            args.export_json,
            args.out_json,
            params.register.min_improvement,
        ),
        inputs=lambda args: {
            args.split_dir: f"split@{args.dataset}",
            args.model_dir: f"train@{args.dataset}",
            args.metrics_json: f"evaluate@{args.dataset}",
            args.export_json: f"export@{args.dataset}",
        },
    )

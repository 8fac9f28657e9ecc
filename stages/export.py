"""DVC stage: the trained model as each format in export.formats, every file scored on the test set."""

from pathlib import Path

from cifar_pipeline.core.stage_runner import run_stage
from cifar_pipeline.export.exporter import export_formats


def arguments(parser):
    parser.add_argument("dataset")
    parser.add_argument("split_dir", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("metrics_json", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("table_json", type=Path)


if __name__ == "__main__":
    run_stage(
        __doc__,
        arguments,
        lambda args, params: export_formats(
            args.dataset,
            args.split_dir,
            args.model_dir,
            args.metrics_json,
            args.out_dir,
            args.table_json,
            params.export,
        ),
        inputs=lambda args: {
            args.split_dir: f"split@{args.dataset}",
            args.model_dir: f"train@{args.dataset}",
            args.metrics_json: f"evaluate@{args.dataset}",
        },
        outputs=lambda args: [args.out_dir],
    )

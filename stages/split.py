"""DVC stage: seeded, stratified train/validation split (and optional subsample)."""

from pathlib import Path

from cifar_pipeline.core.stage_runner import run_stage
from cifar_pipeline.data.split import split_dataset


def arguments(parser):
    parser.add_argument("dataset")
    parser.add_argument("raw_dir", type=Path)
    parser.add_argument("out_dir", type=Path)


if __name__ == "__main__":
    run_stage(
        __doc__,
        arguments,
        lambda args, params: split_dataset(args.dataset, params, args.raw_dir, args.out_dir),
        inputs=lambda args: {args.raw_dir: f"download@{args.dataset}"},
        outputs=lambda args: [args.out_dir],
    )

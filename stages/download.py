"""DVC stage: fetch, verify and decode one dataset's official binary archive."""

from pathlib import Path

from cifar_pipeline.core.stage_runner import run_stage
from cifar_pipeline.data.download import download_dataset


def arguments(parser):
    parser.add_argument("dataset")
    parser.add_argument("out_dir", type=Path)


if __name__ == "__main__":
    run_stage(
        __doc__,
        arguments,
        lambda args, params: download_dataset(args.dataset, params, args.out_dir),
        outputs=lambda args: [args.out_dir],
    )

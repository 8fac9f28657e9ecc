"""DVC stage: per-channel mean and std of the training split (the model normalises with them)."""

from pathlib import Path

from cifar_pipeline.core.stage_runner import run_stage
from cifar_pipeline.data.channel_stats import normalize_dataset


def arguments(parser):
    parser.add_argument("split_dir", type=Path)
    parser.add_argument("stats_json", type=Path)


if __name__ == "__main__":
    run_stage(
        __doc__,
        arguments,
        lambda args, params: normalize_dataset(args.split_dir, args.stats_json),
        inputs=lambda args: {args.split_dir: f"split@{args.split_dir.name}"},
    )

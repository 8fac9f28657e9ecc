"""DVC stage: validate params.yaml once, before DVC builds any per-dataset stage from it.

Every stage validates params.yaml itself; this one exists for the cases no per-dataset
stage can catch: an empty `datasets` list (DVC would generate no stages and report
success) and an unknown dataset (DVC would stop on its missing `data.<name>` keys
without saying which names are allowed).
"""

from pathlib import Path

from cifar_pipeline.core.params import mark_checked
from cifar_pipeline.core.stage_runner import run_stage


def arguments(parser):
    parser.add_argument("marker", type=Path)


if __name__ == "__main__":
    run_stage(__doc__, arguments, lambda args, params: mark_checked(args.marker))

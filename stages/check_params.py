"""DVC stage: validate params.yaml once, before DVC builds any per-dataset stage from it.

Every stage validates params.yaml itself; this one exists for the cases no per-dataset
stage can catch: an empty `datasets` list (DVC would generate no stages and report
success) and an unknown dataset (DVC would stop on its missing `data.<name>` keys
without saying which names are allowed).
"""

from pathlib import Path

from cifar_pipeline.core.files import atomic_file
from cifar_pipeline.core.stage_runner import run_stage

# DVC has no order-only dependencies, so this stage needs an output that the first per-dataset
# stage depends on. Its content is fixed so that rerunning the check (the `datasets` list or the
# params loader changed) never makes a dataset's stages rerun.
CHECKED_MARKER = (
    "params.yaml passed validation. This file's content never changes: it only orders the\n"
    "check_params stage before every per-dataset stage (see dvc.yaml).\n"
)


def mark_checked(marker: Path) -> None:
    """The stage's output; `run_stage` has already validated params.yaml."""
    with atomic_file(marker) as tmp:
        tmp.write_text(CHECKED_MARKER, encoding="utf-8")


def arguments(parser) -> None:
    parser.add_argument("marker", type=Path)


if __name__ == "__main__":
    run_stage(__doc__, arguments, lambda args, params: mark_checked(args.marker))

"""What every stage script shares: validated params first, and one clear line on failure."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable

from cifar_pipeline.errors import PipelineError
from cifar_pipeline.params import Params, load_params


def run_stage(
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    body: Callable[[argparse.Namespace, Params], None],
) -> None:
    """Parse argv, load params.yaml (fail before any work), run the stage.

    Problems a user can fix (`PipelineError`, or the file system refusing a write)
    print as one `error:` line and exit 2; anything else is a bug and keeps its traceback.
    """
    parser = argparse.ArgumentParser(description=description)
    add_arguments(parser)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)  # `kill`, or a scheduler stopping the job: same as Ctrl-C
    try:
        params = load_params()
        body(args, params)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            "error: interrupted; this stage left no output. Run `dvc repro` again: "
            "training resumes after its last finished epoch",
            file=sys.stderr,
        )
        sys.exit(130)
    except OSError as err:  # disk full, read-only or unwritable output folder
        where = f" {err.filename}" if err.filename else ""
        print(
            f"error: cannot write{where}: {err.strerror or err}; check the folder's permissions and free space",
            file=sys.stderr,
        )
        sys.exit(2)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt

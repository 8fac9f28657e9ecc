"""`cifar-sweep NAME`: run the sweep's trials here, as one of any number of workers; `--best`
prints the best trial's values as `-S` lines and as a recipes.yaml block."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from cifar_pipeline.core.errors import PipelineError, redact
from cifar_pipeline.core.interrupts import catch_interrupts
from cifar_pipeline.sweep.report import best_report
from cifar_pipeline.sweep.spec import SweepError, read_sweep
from cifar_pipeline.sweep.study import open_storage, open_study, storage_url
from cifar_pipeline.sweep.trials import Worker, check_names_are_free, counted


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cifar-sweep", description=__doc__)
    parser.add_argument("name", help="a sweep in sweeps.yaml")
    parser.add_argument("--trials", type=int, help="run at most this many trials in this worker")
    parser.add_argument(
        "--storage",
        help="the study's storage, shared by every worker (e.g. the team's postgresql://user:pass@host/optuna); "
        "default: sweeps/optuna.db (SQLite, this machine's workers only)",
    )
    parser.add_argument("--best", action="store_true", help="print the best trial so far and stop")
    args = parser.parse_args(argv)
    if args.trials is not None and args.trials < 1:
        parser.error("--trials must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    catch_interrupts()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # its lines repeat ours, with every value and a traceback
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    root = Path.cwd()
    try:
        if not (root / "dvc.yaml").is_file():
            raise SweepError("no dvc.yaml here: run cifar-sweep from the project root")
        sweep, raw_params, recipes = read_sweep(args.name, root)
        url = storage_url(args.storage, root)
        storage = open_storage(url)
        if args.best:
            print(best_report(sweep, optuna.load_study(study_name=sweep.name, storage=storage), raw_params, recipes))
            return
        existing = sweep.name in optuna.get_all_study_names(storage)
        check_names_are_free(
            sweep, root, len(optuna.load_study(study_name=sweep.name, storage=storage).trials) if existing else 0
        )
        study, parent = open_study(sweep, storage, url)
        ran = Worker(sweep, study, parent, url, root).run(args.trials)
        print(f"sweep {sweep.name}: this worker ran {ran} trials; the study has {counted(study)} of {sweep.trials}")
    except KeyError as err:  # optuna.load_study on a study that does not exist yet
        print(
            f"error: no study {args.name} in {redact(url)} yet ({err}); run `cifar-sweep {args.name}` first",
            file=sys.stderr,
        )
        sys.exit(2)
    except PipelineError as err:
        print(f"error: {redact(str(err))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted; the running trial ends failed and a worker runs its slot again", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

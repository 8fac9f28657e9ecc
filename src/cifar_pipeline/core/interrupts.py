"""Ctrl-C and SIGTERM as one state: the stage runner installs the handler, long loops ask
`interrupted()`. Apart from the stage runner so a library (the training loop) can ask without
importing the command-line machinery."""

from __future__ import annotations

import signal

_interrupted = False


def catch_interrupts() -> None:
    signal.signal(signal.SIGINT, _interrupt)  # Ctrl-C
    signal.signal(signal.SIGTERM, _interrupt)  # `kill`, or a scheduler stopping the job: same as Ctrl-C


def interrupted() -> bool:
    """Whether Ctrl-C or SIGTERM arrived. The KeyboardInterrupt the handler raises can land
    in code that swallows it (a destructor: "Exception ignored in ..."); long loops check
    this too (the trainer's StopWhenInterrupted), so the signal is never lost."""
    return _interrupted


def _interrupt(signum: int, frame: object) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt

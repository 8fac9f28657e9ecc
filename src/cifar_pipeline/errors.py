"""The one base class for problems a user can fix, so stages can print them as one line."""


class PipelineError(Exception):
    """Bad params, a bad archive, an unreachable URL: say what and how to fix it, then exit non-zero."""


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of a library's exception message (MLflow's run to screenfuls), for a one-line error."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]

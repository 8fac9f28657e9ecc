"""The one base class for problems a user can fix, so stages can print them as one line."""

import re

# A URL's user:password@ and its query string (a presigned signature, a token) never reach a line.
_SCHEME = r"\b[a-zA-Z][a-zA-Z0-9+.-]*://"
_PASSWORD = re.compile(rf"({_SCHEME})([^\s/@:]*):[^\s/@]*@")
_QUERY = re.compile(rf"({_SCHEME}[^\s?#'\"]*)\?[^\s'\"]*")


class PipelineError(Exception):
    """Bad params, a bad archive, an unreachable URL: say what and how to fix it, then exit non-zero."""


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of a library's exception message (MLflow's run to screenfuls), for a one-line error."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]


def redact(text: str) -> str:
    """`text` with every URL's password and query string masked (`user:***@`, `?***`)."""
    return _QUERY.sub(r"\1?***", _PASSWORD.sub(r"\1\2:***@", text))

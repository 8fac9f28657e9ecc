"""The one base class for problems a user can fix, so stages can print them as one line; and the
one rule that keeps URL credentials out of every line, param, tag and dataset source."""

import re
from urllib.parse import parse_qsl, urlsplit

# A URL's userinfo (`user:password@`, or a lone token `token@`) and its query string (a presigned
# signature, an API key) never reach a line or a record; the user name before a password stays,
# it says which account was used.
_SCHEME = r"\b[a-zA-Z][a-zA-Z0-9+.-]*://"
_USERINFO = re.compile(rf"({_SCHEME})([^\s/@:?#]*)(:[^\s/?#]*)?@")
_QUERY = re.compile(rf"({_SCHEME}[^\s?#'\"]*)\?[^\s'\"]*")


# Query parameters that carry a credential: API tokens and keys, and the signatures of S3, GCS
# and Azure pre-signed URLs. Matched on the name (case-insensitive), never on the value.
_SECRET_QUERY = re.compile(
    r"(token|key|secret|passw|pwd|auth|credential|signature|session|^sig$|^code$)", re.IGNORECASE
)


class PipelineError(Exception):
    """Bad params, a bad archive, an unreachable URL: say what and how to fix it, then exit non-zero."""


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of a library's exception message (MLflow's run to screenfuls), for a one-line error."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]


def _mask_userinfo(match: re.Match) -> str:
    scheme, user, password = match.groups()
    return f"{scheme}{user}:***@" if password is not None else f"{scheme}***@"


def redact(text: str) -> str:
    """`text` with every URL's credentials and query string masked (`user:***@`, `***@`, `?***`).

    Applied to every URL the project prints, logs as a param, tags or records as a dataset
    source, so that a secret given in a URL stays in the file or variable it was given in.
    """
    return _QUERY.sub(r"\1?***", _USERINFO.sub(_mask_userinfo, text))


def url_secret(url: str) -> str | None:
    """What secret `url` carries, in words that quote none of it; None when it carries none.

    Used where a URL would be stored (params.yaml's data URLs go into dvc.lock, DVC's run cache
    and git), where masking it is not enough: the stored text must hold no secret at all.
    """
    parts = urlsplit(url)
    if "@" in parts.netloc:
        return "a login (`user:password@` before the host)"
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if _SECRET_QUERY.search(name):
            return f"a credential in its query string (parameter `{name}`)"
    return None

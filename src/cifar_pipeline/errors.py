"""The one base class for problems a user can fix, so stages can print them as one line."""


class PipelineError(Exception):
    """Bad params, a bad archive, an unreachable URL: say what and how to fix it, then exit non-zero."""

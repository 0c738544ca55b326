"""Error types that map onto the CLI's exit codes."""


class UsageError(Exception):
    """Bad flags, bad config, missing input or an unreadable model: exit code 2."""

    exit_code = 2


class JobError(Exception):
    """The job started but could not finish: exit code 1."""

    exit_code = 1

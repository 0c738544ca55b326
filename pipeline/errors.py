"""The job's one error family: every error it raises on purpose derives from ``E5EmbedError``,
which carries the CLI's exit code and the word the CLI's one-line message starts with.

- ``UsageError`` (exit 2): bad flags, settings or config, missing input, an unreadable model, damaged
  bookkeeping that needs the operator. Also a ``ValueError``: a setting checked by a library call
  (``Embedder(prefix=...)``, ``ChunkSettings(...)``) is a bad value to its caller.
- ``JobError`` (exit 1): the job started but could not finish (a held or lost lease, a shard that
  cannot be read, a pipeline failure). Also a ``RuntimeError``.

The CLI maps the family once (``pipeline.cli.main``); anything else that escapes is a job failure
(exit 1) reported with its type.
"""


class E5EmbedError(Exception):
    """Base of every error the job raises on purpose."""

    exit_code = 1
    label = "job failed"  # "e5-embed: <label>: <message>"


class UsageError(E5EmbedError, ValueError):
    """Bad flags, bad config, missing input or an unreadable model: exit code 2."""

    exit_code = 2
    label = "error"


class JobError(E5EmbedError, RuntimeError):
    """The job started but could not finish: exit code 1."""

    exit_code = 1

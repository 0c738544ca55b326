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


class TransientError(JobError):
    """A step failed for a reason a retry may fix (the store, the network or the Hub failed for a
    moment): exit 1, which Airflow and KubeRay retry."""

    label = "temporary failure"


# Exception type names (anywhere in the cause chain) that mean "the other side failed for a moment",
# from libraries this module does not import: aiohttp, botocore, requests/urllib3, httpx, s3fs.
_TRANSIENT_NAMES = frozenset(
    {
        "ClientConnectorError",
        "ClientConnectionError",
        "ClientOSError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ResponseStreamingError",
        "FlexibleChecksumError",
        "IncompleteReadError",
        "ProtocolError",
        "NewConnectionError",
        "MaxRetryError",
        "ConnectError",
        "ReadTimeout",
        "ConnectTimeout",
        "RemoteProtocolError",
        "ChunkedEncodingError",
        "OperationalError",  # DB-API (a SQL catalog's server unreachable, a connection dropped)
        "InterfaceError",
    }
)
# HTTP statuses a retry may clear: throttling, timeouts and server-side failures
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# S3 error codes of the same kind, as botocore and s3fs spell them in messages
_TRANSIENT_CODES = ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling")
# Errors that are about what was asked, never about the moment
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def _status(e: BaseException) -> int | None:
    """An HTTP status carried by the error (requests/httpx ``response.status_code``, aiohttp
    ``status``, botocore ``response["ResponseMetadata"]["HTTPStatusCode"]``)."""
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status if isinstance(status, int) else None
    for holder in (e, response):
        status = getattr(holder, "status_code", None) or getattr(holder, "status", None)
        if isinstance(status, int):
            return status
    return None


def _one_transient(e: BaseException) -> bool | None:
    """True/False where this link of the chain decides; None where it only wraps its cause."""
    name = type(e).__name__
    if isinstance(e, E5EmbedError):
        return isinstance(e, TransientError)
    if name == "OfflineModeIsEnabled":  # HF_HUB_OFFLINE=1 asked for it (a ConnectionError subclass)
        return False
    if name == "LocalEntryNotFoundError":  # the Hub's wrapper: its cause says why
        return None
    if isinstance(e, _PERMANENT) or name in ("FileExpired", "BadGzipFile", "ArrowInvalid"):
        return False
    if isinstance(e, (ConnectionError, TimeoutError)) or name in _TRANSIENT_NAMES:
        return True
    status = _status(e)
    if status is not None:
        return status in _TRANSIENT_STATUS
    if isinstance(e, OSError):  # s3fs and fsspec raise OSError for a request that kept failing
        return True
    if any(code in str(e) for code in _TRANSIENT_CODES):
        return True
    return None


def is_transient(e: BaseException) -> bool:
    """The one classification: may a retry of the same step succeed? The outermost link of the
    cause chain that decides does (a Hub lookup that failed on a connection reset is transient; a
    404, a missing file or a refused permission is not; an error nothing recognises is not)."""
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        decided = _one_transient(current)
        if decided is not None:
            return decided
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return False


def is_refused(e: BaseException) -> bool:
    """Did the store refuse what was asked (no permission: ``PermissionError``, HTTP 401/403)? No
    retry grants a permission; the operator must (exit 2). Anywhere in the cause chain."""
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PermissionError) or _status(current) in (401, 403):
            return True
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return False


def step_failed(what: str, e: BaseException) -> E5EmbedError:
    """The error a start-up step raises when ``e`` stops it: ``TransientError`` (exit 1, retry) when
    a retry may fix it, else ``UsageError`` (exit 2: the operator must change something). ``what``
    names the step and its object, e.g. ``"cannot list input s3://b/x"``."""
    cls = TransientError if is_transient(e) else UsageError
    detail = str(e).splitlines()[0] if str(e) else ""
    return cls(f"{what}: {type(e).__name__}: {detail}" + ("; a retry may succeed" if cls is TransientError else ""))

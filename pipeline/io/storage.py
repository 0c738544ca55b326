"""All storage access goes through here: one fsspec wrapper for S3, GCS, local, ...

S3 uses the standard AWS chain (env, profile, instance role) and honours
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for S3-compatible stores.
Secrets in storage options (at any depth) and credentials inside URIs are never logged (see :func:`scrub`).
File names are never patterns: listings are literal (``ls``/``find``), deletes are single files.
"""

from __future__ import annotations

import collections
import logging
import os
import posixpath
import re
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import fsspec
from fsspec.core import url_to_fs

logger = logging.getLogger(__name__)

_SECRET_KEY = re.compile(r"secret|password|passwd|token|credential|session|key|connection_string|sas|auth", re.I)
_GLOB_CHARS = re.compile(r"[*?\[]")
# scheme://user:password@host/... (also scheme://token@host): credentials inside a URI
_URI_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<creds>[^/@\s]+)@")


def secret_values(options: Any) -> list[str]:
    """Every string value under a secret-looking key, at any depth of mappings and lists."""
    found: list[str] = []

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, secret or bool(_SECRET_KEY.search(str(k))))
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v, secret)
        elif secret and isinstance(value, str) and value:
            found.append(value)
            # connection strings / SAS query strings: each key=value part is a secret on its own
            found.extend(
                part.split("=", 1)[1]
                for part in re.split(r"[;&]", value)
                if "=" in part and len(part.split("=", 1)[1]) >= 6
            )

    walk(options, False)
    return found


def strip_uri_credentials(uri: str) -> str:
    """``s3://key:secret@bucket/x`` -> ``s3://bucket/x``: a URI safe to record.

    Only ``user:password@`` is removed; ``abfs://container@account`` names a location, not a secret.
    """
    return _URI_CREDENTIALS.sub(lambda m: m.group("scheme") if ":" in m.group("creds") else m.group(0), uri)


# query parameters that carry a credential (presigned S3/GCS URLs, SAS tokens, API keys)
_SECRET_QUERY = re.compile(r"signature|credential|token|secret|password|passwd|^sig$|^se$|accesskey|api[-_]?key", re.I)


def uri_credentials(uri: str) -> str | None:
    """What kind of credential a URI carries inside it (``user:password@``, or an http(s) query string
    with a signature, token or key), or None. Such a URI would be recorded (manifest, ``source``
    columns, shard log, logs), so the job refuses it and points to ``--storage-options``."""
    match = _URI_CREDENTIALS.match(uri)
    if match and ":" in match.group("creds"):
        return "a user:password@ part"
    if uri.lower().startswith(("http://", "https://")) and "?" in uri:
        from urllib.parse import parse_qsl, urlsplit

        names = [name for name, _ in parse_qsl(urlsplit(uri).query, keep_blank_values=True)]
        if any(_SECRET_QUERY.search(name) for name in names):
            return "a signed or token-bearing query string"
    return None


def safe_uri(uri: str) -> str:
    """A URI as it may be shown: no ``user:password@``, no query string on http(s)."""
    uri = strip_uri_credentials(uri)
    return uri.split("?", 1)[0] if uri.lower().startswith(("http://", "https://")) else uri


def normalize_uri(uri: str) -> str:
    """One spelling per location: absolute ``file://`` paths, no credentials, no trailing slash."""
    uri = strip_uri_credentials(os.fspath(uri))
    if "://" not in uri or uri.startswith(("file://", "local://")):
        path = uri.split("://", 1)[1] if "://" in uri else uri
        return "file://" + os.path.normpath(os.path.abspath(os.path.expanduser(path)))
    scheme, rest = uri.split("://", 1)
    scheme = {"s3a": "s3", "gcs": "gs"}.get(scheme.lower(), scheme.lower())
    rest = re.sub(r"/+", "/", rest).rstrip("/")
    return f"{scheme}://{rest}"


def is_within(child: str, parent: str) -> bool:
    """Whether normalised URI ``child`` is ``parent`` or lies below it (local paths with their
    symlinks resolved: a link into the input is still inside it)."""
    a, b = normalize_uri(child), normalize_uri(parent)
    if a.startswith("file://") and b.startswith("file://"):
        a, b = ("file://" + os.path.realpath(u.removeprefix("file://")) for u in (a, b))
    return a == b or a.startswith(b.rstrip("/") + "/")


def _s3_env_options() -> dict[str, Any]:
    """Endpoint from the standard AWS variables, for s3fs builds that don't read them."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if endpoint else {}


@dataclass(frozen=True)
class Storage:
    """A filesystem plus the root path inside it, built from a URI and storage options.

    The one IO boundary: listing, opening, reading, atomic writes and deletes go through these
    methods; the fsspec object itself stays private. ``filesystem`` injects one (tests: a flaky
    filesystem) instead of resolving it from the URI.
    """

    uri: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    filesystem: fsspec.AbstractFileSystem | None = field(default=None, kw_only=True, compare=False, repr=False)

    @property
    def protocol(self) -> str:
        return self.uri.split("://", 1)[0] if "://" in self.uri else "file"

    @property
    def is_local(self) -> bool:
        return self.protocol in ("file", "local")

    def _options(self) -> dict[str, Any]:
        options = dict(self.storage_options)
        if self.protocol in ("s3", "s3a"):
            for k, v in _s3_env_options().items():
                options.setdefault(k, v)
            # Transient errors (503 SlowDown, resets, timeouts) are retried with backoff.
            options.setdefault("config_kwargs", {"retries": {"max_attempts": 10, "mode": "standard"}})
        return options

    @cached_property
    def _resolved(self) -> tuple[fsspec.AbstractFileSystem, str]:
        if self.filesystem is not None:
            return self.filesystem, self.filesystem._strip_protocol(self.uri).rstrip("/")
        fs, path = url_to_fs(self.uri, **self._options())
        return fs, path.rstrip("/")

    @property
    def _fs(self) -> fsspec.AbstractFileSystem:
        return self._resolved[0]

    @property
    def root(self) -> str:
        return self._resolved[1]

    def join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def exists(self, path: str) -> bool:
        return self._fs.exists(path)

    def is_dir(self, path: str) -> bool:
        return self._fs.isdir(path)

    def is_file(self, path: str) -> bool:
        return self._fs.isfile(path)

    def info(self, path: str) -> dict[str, Any]:
        """The object's current size/ETag/mtime (never a cached listing)."""
        self._fs.invalidate_cache(path)
        return self._fs.info(path)

    def forget_listings(self) -> None:
        """Drop every cached listing, so the next one sees the store as it is now."""
        self._fs.invalidate_cache()

    def open(self, path: str, mode: str = "rb"):
        return self._fs.open(path, mode)

    def walk_files(self, path: str | None = None) -> dict[str, dict[str, Any]]:
        """Every file below ``path`` (default: the root), at any depth: ``{path: info}``."""
        found = self._fs.find(self.root if path is None else path, detail=True)
        return {p: i for p, i in found.items() if i.get("type") == "file"}

    def list_files(self, folder: str = "") -> list[tuple[str, dict[str, Any]]]:
        """Files directly in ``folder`` (relative to the root), literally: names are never patterns."""
        return self.files_in(self.join(folder) if folder else self.root)

    def files_in(self, path: str) -> list[tuple[str, dict[str, Any]]]:
        """Files directly in the folder ``path`` (a full path in this filesystem), sorted; [] if none."""
        self._fs.invalidate_cache(path)
        try:
            listed = self._fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        out = []
        for info in listed:
            if info.get("type") != "file":
                continue
            name = info["name"]
            if self.is_local and name.startswith("file://"):
                name = name[len("file://") :]
            out.append((name.rstrip("/"), info))
        return sorted(out, key=lambda x: x[0])

    def download(self, path: str, local_path: str) -> None:
        self._fs.get_file(path, local_path)

    def arrow_filesystem(self):
        """This storage as a ``pyarrow.fs`` filesystem (for Arrow datasets and Ray's Parquet reader)."""
        import pyarrow.fs as pafs

        if self.is_local and self.filesystem is None:
            return pafs.LocalFileSystem()
        return pafs.PyFileSystem(pafs.FSSpecHandler(self._fs))

    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Create ``path`` with ``data`` only if nothing is there (one atomic step); False if it exists.

        S3: a PUT with ``If-None-Match: *``. Local/POSIX: a complete temp file hard-linked to the
        name (``link`` fails when the name exists), so no reader sees a half-written file.
        """
        if self.is_local:
            parent = posixpath.dirname(path)
            os.makedirs(parent, exist_ok=True)
            tmp = posixpath.join(parent, f"._tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
            _write_synced(tmp, data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            _fsync_dir(parent)
            return True
        try:
            self._fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        finally:
            self._fs.invalidate_cache(path)
        return True

    def read_bytes(self, path: str) -> bytes:
        return self._fs.cat_file(path)

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Readers never see a partial object.

        Object stores: one PUT (or one multipart upload, which is also atomic).
        Local/POSIX: write a temp file in the same folder, fsync, rename.
        """
        fs = self._fs
        try:
            if self.is_local:
                parent = posixpath.dirname(path)
                os.makedirs(parent, exist_ok=True)
                tmp = posixpath.join(parent, f"._tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
                _write_synced(tmp, data)
                os.replace(tmp, path)
                _fsync_dir(parent)  # the rename itself survives a power loss
            else:
                fs.pipe_file(path, data)
                fs.invalidate_cache(path)
        except Exception as e:  # the store's own error (its type decides retries), which file it refused
            e.add_note(f"writing {self.display(path)}")
            raise

    def delete(self, path: str) -> None:
        """Remove one file, literally (``fs.rm`` would expand glob characters in the name)."""
        try:
            self._fs.rm_file(path)
        except FileNotFoundError:
            pass
        self._fs.invalidate_cache(path)

    def describe(self) -> str:
        """A printable form of the location: URI only, never the options."""
        return self.uri

    def display(self, path: str) -> str:
        """A printable form of one file of this filesystem (as the error messages name it)."""
        return path if self.is_local else f"{self.protocol}://{path}"

    def url(self, path: str) -> str:
        """One file of this filesystem as a full URI (``file:///…`` locally), as table formats name files."""
        return f"file://{path}" if self.is_local else f"{self.protocol}://{path}"


def _write_synced(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def has_pattern(name: str) -> bool:
    return bool(_GLOB_CHARS.search(name))


_REGISTERED_SECRETS: collections.Counter[str] = collections.Counter()  # secret -> registrations
_SECRETS_LOCK = threading.Lock()
_ENV_SECRETS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "RAY_AUTH_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "GOOGLE_APPLICATION_CREDENTIALS_JSON",
    "HF_TOKEN",
)


def _secrets_in(storage_options: Mapping[str, Any], uris: Sequence[str]) -> list[str]:
    found = list(secret_values(storage_options))
    for uri in uris:
        for m in _URI_CREDENTIALS.finditer(os.fspath(uri)):
            user, _, password = m.group("creds").partition(":")
            found += [v for v in (password, user if password else "") if v]
    return found


def register_secrets(storage_options: Mapping[str, Any], uris: Sequence[str] = ()) -> None:
    """Remember secret-looking option values (at any depth) and credentials written inside URIs for
    the rest of this process (a command line's: its last error message is scrubbed too), so
    ``scrub`` removes them from any message, even one that quotes a path without its scheme."""
    with _SECRETS_LOCK:
        _REGISTERED_SECRETS.update(_secrets_in(storage_options, uris))


@contextmanager
def secrets_registered(storage_options: Mapping[str, Any], uris: Sequence[str] = ()) -> Iterator[None]:
    """``register_secrets`` for the length of a block (one job in a long-lived process: a notebook,
    an Airflow worker, a test session): counted, so two jobs at once keep each other's, and gone
    after, so one job's secrets do not outlive it in the registry."""
    found = _secrets_in(storage_options, uris)
    with _SECRETS_LOCK:
        _REGISTERED_SECRETS.update(found)
    try:
        yield
    finally:
        with _SECRETS_LOCK:
            _REGISTERED_SECRETS.subtract(found)
            for secret in [k for k, n in _REGISTERED_SECRETS.items() if n <= 0]:
                del _REGISTERED_SECRETS[secret]


def scrub(text: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Remove known secret values (storage options at any depth, the AWS/Azure/Ray environment) and
    credentials written inside URIs from a message."""
    with _SECRETS_LOCK:
        registered = list(_REGISTERED_SECRETS)
    secrets = secret_values(storage_options or {}) + registered
    secrets += [v for k, v in os.environ.items() if k in _ENV_SECRETS and v]
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return _URI_CREDENTIALS.sub(lambda m: m.group("scheme") + "***@", text)


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\u0085\u2028\u2029]")


def escape_controls(text: str) -> str:
    """User data (ids, paths) as one printable line: line breaks and other control characters
    escaped, so a record id cannot forge a log line or a terminal sequence."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


class ScrubFilter(logging.Filter):
    """A logging filter that scrubs every record's final message of secrets and escapes its control
    characters, one record one line (installed on the CLI's handler; tracebacks are apart)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = escape_controls(scrub(message))
        if clean != message:
            record.msg, record.args = clean, None
        return True

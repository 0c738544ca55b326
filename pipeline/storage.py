"""All storage access goes through here: one fsspec wrapper for S3, GCS, local, ...

S3 uses the standard AWS chain (env, profile, instance role) and honours
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for S3-compatible stores.
Secrets in storage options are never logged (see :func:`redact`).
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

import fsspec
from fsspec.core import url_to_fs

logger = logging.getLogger(__name__)

_SECRET_KEY = re.compile(r"secret|password|passwd|token|credential|session|key", re.I)
_GLOB_CHARS = re.compile(r"[*?\[]")


def redact(value: Any) -> Any:
    """Replace anything that looks like a secret with ``***`` (recursively)."""
    if isinstance(value, Mapping):
        return {k: ("***" if _SECRET_KEY.search(str(k)) else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def _s3_env_options() -> dict[str, Any]:
    """Endpoint from the standard AWS variables, for s3fs builds that don't read them."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if endpoint else {}


@dataclass(frozen=True)
class Storage:
    """A filesystem plus the root path inside it, built from a URI and storage options."""

    uri: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

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
        fs, path = url_to_fs(self.uri, **self._options())
        return fs, path.rstrip("/")

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._resolved[0]

    @property
    def root(self) -> str:
        return self._resolved[1]

    def join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def read_bytes(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Readers never see a partial object.

        Object stores: one PUT (or one multipart upload, which is also atomic).
        Local/POSIX: write a temp file in the same folder, fsync, rename.
        """
        fs = self.fs
        if self.is_local:
            parent = posixpath.dirname(path)
            os.makedirs(parent, exist_ok=True)
            tmp = posixpath.join(parent, f"._tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            fs.pipe_file(path, data)

    def delete(self, path: str) -> None:
        fs = self.fs
        if fs.exists(path):
            fs.rm(path, recursive=True)

    def describe(self) -> str:
        """A printable form of the location: URI only, never the options."""
        return self.uri


def is_glob(path: str) -> bool:
    return bool(_GLOB_CHARS.search(path))


def glob_root(path: str) -> str:
    """The non-glob folder part of a glob pattern."""
    match = _GLOB_CHARS.search(path)
    head = path[: match.start()] if match else path
    return head.rsplit("/", 1)[0] if "/" in head else ""


_REGISTERED_SECRETS: set[str] = set()


def register_secrets(storage_options: Mapping[str, Any]) -> None:
    """Remember secret-looking option values so ``scrub`` can remove them from any message."""
    _REGISTERED_SECRETS.update(v for k, v in storage_options.items() if _SECRET_KEY.search(str(k)) and isinstance(v, str))


def scrub(text: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Remove known secret values (storage options, AWS env) from a message."""
    secrets = [v for k, v in (storage_options or {}).items() if _SECRET_KEY.search(str(k)) and isinstance(v, str)]
    secrets += list(_REGISTERED_SECRETS)
    secrets += [v for k, v in os.environ.items() if k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN")]
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text

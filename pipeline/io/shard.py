"""One input file as the job knows it: where it is, its format, its size and the version that a
rewrite cannot keep (together, its fingerprint)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    path: str  # filesystem path as fsspec names it (bucket/key for S3)
    relpath: str  # relative to the input root: the stable part of derived ids
    size: int
    format: str  # a name in ``pipeline.io.formats.FORMATS``
    compression: str | None
    protocol: str = "file"
    version: str = ""  # ETag / generation / mtime at listing time: (size, version) is the fingerprint

    @property
    def uri(self) -> str:
        return f"{self.protocol}://{self.path}"

    @property
    def fingerprint(self) -> tuple[int, str]:
        return (self.size, self.version)

    @property
    def version_key(self) -> str:
        """The fingerprint as one string: what data files record for the rows they hold of it."""
        return f"{self.size}:{self.version}"

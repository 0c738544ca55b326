"""The formats the reader knows, and how ``--input-format auto`` picks one by file name (a
compression suffix, ``.gz`` or ``.zst``, first taken off)."""

from __future__ import annotations

import posixpath

from pipeline.errors import UsageError
from pipeline.io.formats.base import Format
from pipeline.io.formats.jsonl import JsonlFormat
from pipeline.io.formats.parquet import ParquetFormat
from pipeline.io.formats.text import TextFormat
from pipeline.io.shard import Shard

FORMATS: dict[str, Format] = {f.name: f for f in (TextFormat(), JsonlFormat(), ParquetFormat())}
INPUT_FORMATS = ("auto", *FORMATS)  # --input-format
COMPRESSION_BY_EXTENSION = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_BY_EXTENSION = {ext: f.name for f in FORMATS.values() for ext in f.extensions}


def detect_format(path: str, override: str = "auto") -> tuple[str | None, str | None]:
    """(format name, compression) from the file name; the name None when unknown."""
    name = posixpath.basename(path).lower()
    stem, ext = posixpath.splitext(name)
    compression = COMPRESSION_BY_EXTENSION.get(ext)
    if compression:
        ext = posixpath.splitext(stem)[1]
    return (override if override != "auto" else _BY_EXTENSION.get(ext)), compression


def format_of(shard: Shard) -> Format:
    try:
        return FORMATS[shard.format]
    except KeyError:
        raise UsageError(f"{shard.uri}: unknown input format {shard.format!r}; valid: {', '.join(FORMATS)}") from None

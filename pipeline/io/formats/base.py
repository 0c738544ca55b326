"""What an input format does: say which files are its own (by extension), yield a shard's rows
from a start row on (each a record or a reject with its reason, never an exception for bad data),
and count a shard's rows exactly where its files store the count."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from pipeline.io.records import FieldSpec
from pipeline.io.shard import Shard
from pipeline.io.storage import Storage

# (row, record): record None for a row before ``start`` (counted, not parsed); else a dict with
# row, id, text, title, reject_reason (``pipeline.io.records``)
Row = tuple[int, "dict | None"]


class Format(Protocol):
    name: str  # what --input-format takes and Shard.format holds
    extensions: tuple[str, ...]  # lower case, with the dot: how --input-format auto knows a file
    counts_rows: bool  # True when ``count`` answers without reading the records

    def rows(
        self, storage: Storage, shard: Shard, fields: FieldSpec, start: int, max_record_bytes: int
    ) -> Iterator[Row]:
        """Every row of the shard in order, from row 0: rows below ``start`` as (row, None). A
        stream that cannot be decoded further raises ``streams.CorruptStream`` (the rest is lost,
        said); transient I/O raises as it comes (the reader re-opens at the next row)."""
        ...

    def count(self, storage: Storage, shard: Shard) -> int | None:
        """The shard's exact row count from what its file stores (a footer), or None."""
        ...

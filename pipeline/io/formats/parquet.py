"""``parquet``: one record per row, read in column batches (only the id, text and title columns);
the footer holds the exact row count. A value past ``--max-record-bytes`` is nulled in Arrow before
any Python string is made of it, and its row is a reject with that reason, as in the line formats."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.io.formats.base import Row
from pipeline.io.records import FieldSpec, record_from_json, title_of
from pipeline.io.shard import Shard
from pipeline.io.storage import Storage
from pipeline.io.streams import CorruptStream

BATCH_ROWS = 8192


class ParquetFormat:
    name = "parquet"
    extensions = (".parquet",)
    counts_rows = True  # the footer

    def count(self, storage: Storage, shard: Shard) -> int | None:
        with storage.open(shard.path) as f:
            return pq.ParquetFile(f).metadata.num_rows

    def rows(
        self, storage: Storage, shard: Shard, fields: FieldSpec, start: int, max_record_bytes: int
    ) -> Iterator[Row]:
        with storage.open(shard.path) as f:
            try:
                pf = pq.ParquetFile(f)
                names = set(pf.schema_arrow.names)
                total = pf.metadata.num_rows
            except pa.ArrowInvalid as e:
                raise CorruptStream(f"parquet: {e}") from e
            if fields.text_field not in names:
                reason = f"parquet shard has no column {fields.text_field!r}"
                for row in range(total):
                    yield row, {"row": row, "id": None, "text": None, "reject_reason": reason}
                return
            wanted = [c for c in (fields.id_field, fields.text_field, fields.title_field) if c and c in names]
            yield from self._batches(
                pf.iter_batches(columns=wanted, batch_size=BATCH_ROWS), fields, start, max_record_bytes
            )

    def _batches(self, batches, fields: FieldSpec, start: int, max_record_bytes: int) -> Iterator[Row]:
        row = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise CorruptStream(f"parquet: {e}") from e
            if row + batch.num_rows <= start:
                for _ in range(batch.num_rows):
                    yield row, None
                    row += 1
                continue
            batch, oversized = _cut_oversized(batch, fields, max_record_bytes)
            for i, obj in enumerate(batch.to_pylist()):
                if row < start:
                    yield row, None
                elif i in oversized:  # never turned into a Python string, never tokenized
                    reason = f"record larger than --max-record-bytes ({oversized[i]} > {max_record_bytes} bytes)"
                    yield row, {"row": row, "id": None, "text": None, "title": None, "reject_reason": reason}
                else:
                    yield row, _record(obj, row, fields)
                row += 1


def _record(obj: dict, row: int, fields: FieldSpec) -> dict:
    try:
        record_id, text, reason = record_from_json(obj, fields)
        title = title_of(obj, fields) if reason is None else None
    except Exception as e:  # a record must never fail its shard
        record_id, text, reason, title = None, None, f"unusable record: {type(e).__name__}", None
    return {"row": row, "id": record_id, "text": text, "title": title, "reject_reason": reason}


def _cut_oversized(
    batch: pa.RecordBatch, fields: FieldSpec, max_record_bytes: int
) -> tuple[pa.RecordBatch, dict[int, int]]:
    """Rows whose text (and title) bytes pass ``max_record_bytes``: their values nulled in the
    batch (before any Python string is made of them) and their sizes by index. (Parquet keeps a
    value inside one page: reading it cannot be avoided, embedding it can.)"""
    sizes = None
    for name in (fields.text_field, fields.title_field):
        if not name or name not in batch.schema.names:
            continue
        column = batch.column(name)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        length = pc.fill_null(pc.binary_length(column), 0).cast(pa.int64())
        sizes = length if sizes is None else pc.add(sizes, length)
    if sizes is None:
        return batch, {}
    over = pc.greater(sizes, max_record_bytes)
    if not pc.any(over).as_py():
        return batch, {}
    index = np.flatnonzero(over.to_numpy(zero_copy_only=False))
    found = {int(i): int(sizes[int(i)].as_py()) for i in index}
    for name in (fields.text_field, fields.title_field):
        if name and name in batch.schema.names:
            column = batch.column(name)
            nulled = pc.if_else(over, pa.nulls(len(column), column.type), column)
            batch = batch.set_column(batch.schema.get_field_index(name), name, nulled)
    return batch, found

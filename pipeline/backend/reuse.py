"""Carrying vectors over instead of encoding again (``--update``, ``--reuse-from``).

A record whose ``text_hash`` equals that of a row already embedded under the same model identity
gets that row's vector: the model would read the same bytes. The match is a Ray Data hash join
on ``text_hash`` (partitioned on the cluster; nothing is collected on the driver):

    records of the shards to read ─(id, source, row, text_hash)─┐
                                                                 ├─ inner join ─▶ data files
    rows of the pool files ─(text_hash, embedding, n_tokens, truncated)─┘

The carried rows are written as ordinary data files (coverage, versions and counters in their
footers, behind the lease fence), so the pipeline that follows skips them like any done row and
encodes only what found no match. A crash part-way leaves only complete files: the rerun joins
what is still missing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipeline.backend.datasink import EmbeddingDatasink
from pipeline.backend.datasource import ShardDatasource
from pipeline.errors import JobError
from pipeline.io import coverage, schemas
from pipeline.io.layout import TRUNCATE, Layout
from pipeline.io.storage import Storage, safe_uri
from pipeline.ledger.identity import identity
from pipeline.ledger.reuse import PoolFile

KEY_COLUMNS = ("id", "source", "row", "text_hash")
ROWS_PER_JOIN_PARTITION = 2_000_000
FILES_PER_POOL_TASK = 8


def _check_made_as_expected(table: pa.Table, pool_file: PoolFile, expected: Mapping[str, Any]) -> None:
    """The file as read now was made with the vector identity it had when the pool was checked: a
    source overwritten meanwhile (another model, same file names) must not lend its rows."""
    raw = (table.schema.metadata or {}).get(schemas.METADATA_KEY)
    made = json.loads(raw) if raw else {}
    made = made if isinstance(made, dict) else {}
    differ = [k for k in expected if identity(made, k) != identity(expected, k)]
    if made.get("producer") != schemas.PRODUCER or differ:
        what = (
            ", ".join(f"{k}: {made.get(k)!r} (expected {expected.get(k)!r})" for k in differ[:3])
            or "no e5-embed footer"
        )
        raise JobError(
            f"{safe_uri(pool_file.uri)}: {pool_file.path} changed after it was checked as a source of vectors "
            f"({what}); was it overwritten meanwhile? Nothing of it was used; run again"
        )


def _pool_rows(
    storage_options: Mapping[str, Any],
    files: Sequence[PoolFile],
    embedding_type: pa.DataType,
    layout: Layout,
    expected: Mapping[str, Any],
) -> pa.Table:
    """One read task: the pool rows of ``files``, one per text_hash (per text_hash and window in
    chunked outputs: a record's windows follow from its text and the chunk settings). Each file's
    footer is checked against ``expected`` (the run's vector identity) as it is read."""
    schema = _pool_schema(embedding_type, layout)
    tables = []
    for pool_file in files:
        storage = Storage(pool_file.uri, storage_options)
        with storage.open(pool_file.path) as f:
            table = pq.read_table(f, columns=[n for n in schema.names if n != "windows"] + ["source"])
        _check_made_as_expected(table, pool_file, expected)
        if pool_file.sources is not None:
            table = table.filter(pc.is_in(table["source"], pa.array(pool_file.sources, pa.string())))
        table = table.select([n for n in schema.names if n != "windows"])
        if layout.windowed:  # how many windows the record has: a regrouped record must have them all
            counts = table.group_by("text_hash").aggregate([("chunk", "max")])
            windows = pc.add(counts["chunk_max"], 1).cast(pa.int32())
            table = table.append_column("windows", windows.take(pc.index_in(table["text_hash"], counts["text_hash"])))
        tables.append(table.select(schema.names).cast(schema))
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return table.take(pa.array(_first_of_each(table, layout), pa.int64()))


def _first_of_each(table: pa.Table, layout: Layout) -> np.ndarray:
    """Indices of the first row of each distinct text_hash (and chunk)."""
    if table.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    array = table["text_hash"].combine_chunks()
    width = array.type.byte_width
    raw = np.frombuffer(array.buffers()[1], dtype=np.uint8)[array.offset * width : (array.offset + len(array)) * width]
    keys = raw.reshape(-1, width)
    if layout.windowed:
        chunk = table["chunk"].to_numpy().astype("<i4").view(np.uint8).reshape(-1, 4)
        keys = np.concatenate([keys, chunk], axis=1)
    _, first = np.unique(np.ascontiguousarray(keys).view(f"V{keys.shape[1]}").ravel(), return_index=True)
    return np.sort(first)


def _pool_schema(embedding_type: pa.DataType, layout: Layout) -> pa.Schema:
    from pipeline.io.text_hash import TEXT_HASH_TYPE

    fields = [
        pa.field("text_hash", TEXT_HASH_TYPE),
        pa.field("embedding", embedding_type),
        pa.field("n_tokens", pa.int32()),
        pa.field("truncated", pa.bool_()),
    ]
    if layout.windowed:
        fields += [
            pa.field("chunk", pa.int32()),
            pa.field("char_start", pa.int64()),
            pa.field("char_end", pa.int64()),
            pa.field("windows", pa.int32()),  # the record's window count
        ]
    return pa.schema(fields)


@dataclass
class PoolDatasource(Datasource):
    """Ray Data datasource over pool files (groups of ``FILES_PER_POOL_TASK`` per read task)."""

    files: Sequence[PoolFile]
    storage_options: Mapping[str, Any]
    embedding_type: pa.DataType
    layout: Layout = TRUNCATE  # the pool files' rows: one per record, or per window (--chunk-tokens)
    expected: Mapping[str, Any] = field(default_factory=dict)  # the vector identity every file must carry

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_name(self) -> str:
        return "ReadReusePool"

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None):
        tasks = []
        for start in range(0, len(self.files), FILES_PER_POOL_TASK):
            group = tuple(self.files[start : start + FILES_PER_POOL_TASK])
            args = (dict(self.storage_options), group, self.embedding_type, self.layout, dict(self.expected))
            meta = BlockMetadata(
                num_rows=None, size_bytes=None, exec_stats=None, input_files=tuple(f.path for f in group)
            )
            tasks.append(
                ReadTask(
                    lambda a=args: [_pool_rows(*a)],
                    meta,
                    schema=_pool_schema(self.embedding_type, self.layout),
                    per_task_row_limit=per_task_row_limit,
                )
            )
        return tasks


def _keys(batch: pa.Table) -> pa.Table:
    """The join's left side: records (not rejects) by their fingerprint."""
    return batch.filter(pc.is_null(batch["reject_reason"])).select(list(KEY_COLUMNS))


def _one_row_each(batch: pa.Table) -> pa.Table:
    """Joined rows as the sink takes them: one per input row (a record whose text several pool rows
    share is matched once per pool row), with the reject_reason the sink expects."""
    batch = batch.take(coverage.first_of_each_row(batch)).sort_by([("source", "ascending"), ("row", "ascending")])
    return batch.append_column("reject_reason", pa.nulls(batch.num_rows, pa.string()))


def _windows_as_records(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """Chunked runs: joined window rows back into one row per record with its windows as lists
    (``schema``: ``schemas.chunk_embedded_schema``), as the encode stage hands them to the sink.
    A record whose text several pool records share gets each window once."""
    if batch.num_rows == 0:
        return schema.empty_table()
    batch = batch.take(coverage.first_of_each_row(batch))  # each (source, row, chunk) once
    batch = batch.sort_by([("source", "ascending"), ("row", "ascending"), ("chunk", "ascending")])
    starts, ends = _record_spans(batch)
    # a record's windows may arrive in two blocks: only a record with every window (0..n-1) here is
    # written; one cut between blocks is left out whole, so the pipeline encodes it
    expected = batch["windows"].to_numpy()[starts]
    whole = (ends - starts == expected) & (batch["chunk"].to_numpy()[ends - 1] == expected - 1)
    if not whole.all():
        batch = batch.filter(pa.array(np.repeat(whole, ends - starts)))
        if batch.num_rows == 0:
            return schema.empty_table()
        starts, ends = _record_spans(batch)
    offsets = pa.array(np.append(starts, batch.num_rows).astype(np.int32))
    first = pa.array(starts, pa.int64())

    def windows(name: str) -> pa.Array:
        return pa.ListArray.from_arrays(offsets, batch[name].combine_chunks())

    columns = {
        **{n: batch[n].take(first) for n in ("id", "source", "row", "text_hash", "truncated")},
        "reject_reason": pa.nulls(len(starts), pa.string()),
        **{n: windows(n) for n in ("embedding", "char_start", "char_end", "n_tokens")},
    }
    return pa.Table.from_arrays([columns[n] for n in schema.names], schema=schema)


def _record_spans(batch: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) of each record's rows in a table sorted by (source, row)."""
    source, row = batch["source"].to_numpy(zero_copy_only=False), batch["row"].to_numpy()
    new_record = np.ones(batch.num_rows, dtype=bool)
    new_record[1:] = (source[1:] != source[:-1]) | (row[1:] != row[:-1])
    starts = np.flatnonzero(new_record)
    return starts, np.append(starts[1:], batch.num_rows)


def carry_over(
    *,
    records: ShardDatasource,
    pool: PoolDatasource,
    pool_rows: int,
    sink: EmbeddingDatasink,
    record_schema: pa.Schema | None = None,
) -> int:
    """Write every record of ``records`` that matches a pool row, with that row's vector (chunked
    runs: all its windows, ``record_schema`` being the encode stage's output); the number of
    records written."""
    import ray

    if not pool.files or not records.shards:
        return 0
    keys = ray.data.read_datasource(records).map_batches(_keys, batch_format="pyarrow")
    vectors = ray.data.read_datasource(pool)
    partitions = max(1, min(200, math.ceil(pool_rows / ROWS_PER_JOIN_PARTITION)))
    joined = keys.join(vectors, join_type="inner", num_partitions=partitions, on=("text_hash",))
    if pool.layout.windowed:
        joined = joined.map_batches(
            _windows_as_records, fn_kwargs={"schema": record_schema}, batch_format="pyarrow", batch_size=None
        )
    else:
        joined = joined.map_batches(_one_row_each, batch_format="pyarrow", batch_size=None)
    joined.write_datasink(sink)
    return sink.totals.rows_written


def carry_over_pass(
    *,
    pool: Sequence[PoolFile],
    records: ShardDatasource,
    sink: EmbeddingDatasink,
    storage_options: Mapping[str, Any],
    expected: Mapping[str, Any],
    layout: Layout,
) -> int:
    """Write the records that match a pool row by ``text_hash`` with that row's vector (in the
    sink's embedding shape, in ``layout``'s rows); the rows written."""
    vectors = PoolDatasource(
        files=list(pool),
        storage_options=dict(storage_options),
        embedding_type=schemas.embedding_type(sink.dim, sink.output_dtype),
        layout=layout,
        expected=dict(expected),
    )
    record_schema = layout.embedded_schema(sink.dim, sink.output_dtype) if layout.windowed else None
    return carry_over(
        records=records, pool=vectors, pool_rows=sum(f.rows for f in pool), sink=sink, record_schema=record_schema
    )

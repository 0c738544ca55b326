"""Writes embedded rows as Parquet data files and rejected rows under ``_rejects/``.

Each ``write`` call gets a bundle of blocks (at least ``rows_per_file`` rows,
often one encode output block), sorts it by input position and writes files of
at most ``rows_per_file`` rows, each named by a digest of the input rows it
covers and published atomically (see ``Storage``). Nothing is collected on the
driver: write tasks return small counters only.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections import Counter
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink
from ray.data.datasource.datasink import WriteResult

from pipeline import coverage, schemas
from pipeline.lease import LeaseFence
from pipeline.storage import Storage

logger = logging.getLogger(__name__)

REJECTS_DIR = "_rejects"


def reason_kind(reason: str) -> str:
    """A countable category for a reject reason ("invalid JSON: ... col 5" -> "invalid JSON")."""
    return re.sub(r"\d+", "N", reason.split(":", 1)[0]).strip()


def file_stats(table: pa.Table) -> dict[str, Any]:
    """Counters stored in a file's footer, so totals can be rebuilt from the files alone."""
    if "reason" in table.column_names:
        return {"rows": table.num_rows,
                "reject_kinds": dict(Counter(reason_kind(r) for r in table["reason"].to_pylist()))}
    return {"rows": table.num_rows, "tokens": int(pc.sum(table["n_tokens"]).as_py() or 0),
            "truncated": int(pc.sum(table["truncated"].cast(pa.int64())).as_py() or 0)}


def put_file(storage: Storage, folder: str, table: pa.Table, metadata: Mapping[str, Any],
             stats: Mapping[str, Any]) -> str:
    """Publish one data/rejects file atomically, named by the input rows it covers."""
    ranges = coverage.ranges_of(table)
    meta = dict(table.schema.metadata or {})
    meta[schemas.METADATA_KEY] = json.dumps({**metadata, "producer": schemas.PRODUCER}, sort_keys=True).encode()
    meta[schemas.COVERAGE_KEY] = coverage.encode(ranges)
    meta[schemas.STATS_KEY] = json.dumps(dict(stats), sort_keys=True).encode()
    table = table.replace_schema_metadata(meta)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    name = f"part-{coverage.digest(ranges)}.parquet"
    path = storage.join(folder, name) if folder else storage.join(name)
    storage.write_bytes_atomic(path, buf.getvalue())
    return path


class EmbeddingDatasink(Datasink[dict]):
    def __init__(self, *, output_uri: str, storage_options: Mapping[str, Any], metadata: Mapping[str, Any],
                 dim: int, output_dtype: str, rows_per_file: int, fence: LeaseFence | None = None):
        self.fence = fence  # a write task of a run that lost its lease writes nothing
        self.output_uri = output_uri
        self.storage_options = dict(storage_options)
        self.metadata = dict(metadata)
        self.dim = dim
        self.output_dtype = output_dtype
        self.rows_per_file = rows_per_file
        self.totals: dict[str, Any] = {}

    def get_name(self) -> str:
        return "WriteEmbeddings"

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks: Iterable[Block], ctx) -> dict:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        stats: dict[str, Any] = {"rows_written": 0, "rows_rejected": 0, "tokens": 0, "truncated": 0,
                                 "reject_kinds": Counter(), "data_files": 0}
        if not tables:
            return stats
        # Sorted by input position, so each file covers few, contiguous row ranges.
        table = pa.concat_tables(tables).sort_by([("source", "ascending"), ("row", "ascending")])
        if self.fence is not None:
            self.fence.check()
        storage = Storage(self.output_uri, self.storage_options)
        is_reject = pc.is_valid(table["reject_reason"])
        schema = schemas.output_schema(self.dim, self.output_dtype)
        good = table.filter(pc.invert(is_reject)).select(schema.names).cast(schema)
        bad = table.filter(is_reject)
        rejects = pa.Table.from_arrays([bad["source"], bad["row"], bad["id"], bad["reject_reason"]],
                                       schema=schemas.REJECTS)
        for start in range(0, good.num_rows, self.rows_per_file):
            chunk = good.slice(start, self.rows_per_file)
            written = file_stats(chunk)
            put_file(storage, "", chunk, self.metadata, written)
            stats["rows_written"] += written["rows"]
            stats["tokens"] += written["tokens"]
            stats["truncated"] += written["truncated"]
            stats["data_files"] += 1
        for start in range(0, rejects.num_rows, self.rows_per_file):
            chunk = rejects.slice(start, self.rows_per_file)
            rejected = file_stats(chunk)
            put_file(storage, REJECTS_DIR, chunk, self.metadata, rejected)
            stats["rows_rejected"] += rejected["rows"]
            stats["reject_kinds"].update(rejected["reject_kinds"])
        stats["reject_kinds"] = dict(stats["reject_kinds"])
        return stats

    def on_write_complete(self, write_result: WriteResult[dict]) -> None:
        totals: dict[str, Any] = {"rows_written": 0, "rows_rejected": 0, "tokens": 0, "truncated": 0,
                                  "data_files": 0}
        kinds: Counter = Counter()
        for stats in write_result.write_returns:
            for key in totals:
                totals[key] += stats.get(key, 0)
            kinds.update(stats.get("reject_kinds", {}))
        totals["reject_kinds"] = dict(kinds)
        self.totals = totals

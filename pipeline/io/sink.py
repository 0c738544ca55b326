"""Writes embedded rows as Parquet data files and rejected rows under ``_rejects/``.

``write_rows`` gets a table (a write task's bundle: at least ``rows_per_file`` rows, often
one encode output block), sorts it by input position and writes files of at most
``rows_per_file`` rows, each named by a digest of the input rows it covers, with its coverage
and counters in its footer, published atomically (see ``Storage``). Pure: the Ray Data
datasink (``pipeline.backend.datasink``) is a shell over it, and returns counters only.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import JobError
from pipeline.io import coverage, schemas
from pipeline.io.counters import Counters
from pipeline.io.layout import Layout
from pipeline.io.storage import Storage

logger = logging.getLogger(__name__)

REJECTS_DIR = "_rejects"


def file_stats(table: pa.Table) -> dict[str, Any]:
    """Counters stored in a file's footer, so totals can be rebuilt from the files alone."""
    return Counters.of_table(table).footer()


def put_file(
    storage: Storage,
    folder: str,
    table: pa.Table,
    metadata: Mapping[str, Any],
    stats: Mapping[str, Any],
    versions: Mapping[str, str],
    fence: Callable[[], None] | None = None,
    name_salt: str = "",
) -> str:
    """Publish one data/rejects file atomically, named by the input rows it covers. ``versions``
    gives each source shard's version key (``Shard.version_key``) as it was read: its rows in this
    file are current only while the shard still has that version.

    ``fence`` (the run's lease check) runs just before the file is published and again just after:
    a file that was new and got published after the lease was lost (the check and the upload
    straddled a takeover) is deleted again, so a late write never stays in an output another run
    now holds. A file that was already there (a retried write: same rows, same name) is left."""
    ranges = coverage.ranges_of(table)
    missing = [s for s in ranges if s not in versions]
    if missing:
        raise ValueError(f"no version for source(s) {missing[:3]} of a file to write")
    meta = dict(table.schema.metadata or {})
    meta[schemas.METADATA_KEY] = json.dumps({**metadata, "producer": schemas.PRODUCER}, sort_keys=True).encode()
    meta[schemas.COVERAGE_KEY] = coverage.encode(ranges)
    meta[schemas.STATS_KEY] = json.dumps(dict(stats), sort_keys=True).encode()
    meta[schemas.VERSIONS_KEY] = json.dumps({s: versions[s] for s in ranges}, sort_keys=True).encode()
    table = table.replace_schema_metadata(meta)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    # the rows it covers and the versions they were read at: the same rows give the same name (a retried
    # write overwrites), but rows of a shard's new version never take the name of its stale file
    digest = coverage.digest(ranges, {s: versions[s] for s in ranges})
    if name_salt:  # a published output after --overwrite: never the name of a file an old snapshot reads
        digest = hashlib.sha1(f"{name_salt}:{digest}".encode()).hexdigest()[: len(digest)]
    name = f"part-{digest}.parquet"
    path = storage.join(folder, name) if folder else storage.join(name)
    if fence is None:
        storage.write_bytes_atomic(path, buf.getvalue())
        return path
    existed = storage.exists(path)
    fence()
    storage.write_bytes_atomic(path, buf.getvalue())
    try:
        fence()
    except JobError:  # the lease is lost (a store that failed to answer is not: the file stays)
        if not existed:
            storage.delete(path)
            logger.warning("withdrew %s: the lease was lost while it was published", path)
        raise
    return path


def write_rows(
    storage: Storage,
    table: pa.Table,
    *,
    metadata: Mapping[str, Any],
    dim: int,
    output_dtype: str,
    rows_per_file: int,
    versions: Mapping[str, str],
    fence: Callable[[], None] | None = None,
    carried: bool = False,
    name_salt: str = "",
) -> Counters:
    """Write embedded rows to data files and rejected rows under ``_rejects/``, at most
    ``rows_per_file`` rows per file, sorted by input position; the counters of what was written.
    ``fence`` (the run's lease check) runs before each file is published. ``carried``: the vectors
    were carried over (--update, --reuse-from), which each data file's footer says (``carried``), so
    a resumed update can count what an earlier, killed attempt carried."""
    if table.num_rows == 0:
        return Counters()
    # Sorted by input position, so each file covers few, contiguous row ranges.
    table = table.sort_by([("source", "ascending"), ("row", "ascending")])
    is_reject = pc.is_valid(table["reject_reason"])
    layout = Layout.of_rows(table.column_names)
    schema = layout.output_schema(dim, output_dtype)
    good = table.filter(pc.invert(is_reject))
    if not layout.windowed:  # windowed rows become the file's rows per window below, cut between records
        good = good.select(schema.names).cast(schema)
    bad = table.filter(is_reject)
    rejects = pa.Table.from_arrays([bad["source"], bad["row"], bad["id"], bad["reject_reason"]], schema=schemas.REJECTS)
    written = Counters()
    for folder, rows in (("", good), (REJECTS_DIR, rejects)):
        for start in range(0, rows.num_rows, rows_per_file):
            part = rows.slice(start, rows_per_file)
            if layout.windowed and not folder:
                part = explode_windows(part, schema)
            counters = Counters.of_table(part)
            stats = counters.footer() | ({"carried": counters.rows_written} if carried and not folder else {})
            put_file(storage, folder, part, metadata, stats, versions, fence=fence, name_salt=name_salt)
            written = written + counters
    return written


def explode_windows(records: pa.Table, schema: pa.Schema) -> pa.Table:
    """Records with lists of windows (``schemas.chunk_embedded_schema``) as one row per window."""
    embedding = records["embedding"].combine_chunks()
    parent = pc.list_parent_indices(embedding)
    offsets = embedding.offsets.to_numpy()
    chunk = np.arange(len(parent), dtype=np.int64) - (offsets[parent.to_numpy()] - offsets[0])
    columns = {
        "chunk": pa.array(chunk, pa.int32()),
        "embedding": pc.list_flatten(embedding),
        **{n: pc.list_flatten(records[n].combine_chunks()) for n in ("char_start", "char_end", "n_tokens")},
        **{n: records[n].take(parent) for n in ("id", "truncated", "source", "row", "text_hash")},
    }
    return pa.Table.from_arrays([columns[n] for n in schema.names], schema=schema)

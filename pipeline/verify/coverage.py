"""The coverage half of ``e5-embed verify``: the completeness proof made again, read-only, from the
files' own columns (not only their footers' word), against the listing the output recorded.

Every input row of the recorded listing must be in exactly one data or rejects file; no file may
hold rows of an unlisted source; every data file must be the job's, made with the output's model
and settings; a file's footer must describe the rows it holds (a row deleted or added by hand shows
here); a table snapshot must hold exactly the output's data files. Nothing is written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from pipeline.io import coverage, schemas
from pipeline.io.layout import TRUNCATE, Layout
from pipeline.io.shard import Shard
from pipeline.io.sink import REJECTS_DIR
from pipeline.io.storage import Storage
from pipeline.ledger.completeness import prove
from pipeline.ledger.files import OutputFiles
from pipeline.ledger.identity import PRODUCER, VECTOR_KEYS, identity
from pipeline.ledger.manifest import Manifest
from pipeline.ledger.shard_log import ShardRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataFile:
    path: str
    is_rejects: bool
    rows: int  # the rows it stores (one per window in chunked outputs)


@dataclass
class CoverageReport:
    files: int = 0
    data_files: list[DataFile] = field(default_factory=list)
    rows_expected: int = 0
    rows_embedded: int = 0
    rows_rejected: int = 0
    defects: list[str] = field(default_factory=list)  # each one line, naming the file or rows

    @property
    def ok(self) -> bool:
        return not self.defects


def recorded_shards(manifest: Manifest) -> tuple[list[Shard], dict[str, ShardRecord]]:
    """The listing the output was proven against (``input_shards``), as shards and their records."""
    shards, records = [], {}
    for entry in manifest.input_shards:
        shard = Shard(
            path=entry["path"], relpath="", size=int(entry["size"]), format="", compression=None,
            version=str(entry["version"]),
        )  # fmt: skip
        shards.append(shard)
        if entry.get("rows") is not None:
            records[shard.path] = ShardRecord(
                path=shard.path, size=shard.size, version=shard.version, rows=int(entry["rows"]),
                remainder=entry.get("remainder"),
            )  # fmt: skip
    return shards, records


def check(
    storage: Storage, manifest: Manifest, *, table_files: set[str] | None = None, layout: Layout = TRUNCATE
) -> CoverageReport:
    """The proof again, from the columns; ``table_files``: a snapshot's data files (storage paths)."""
    report = CoverageReport()
    held = OutputFiles(storage, retired=manifest.retired_files)  # retired files are not the output's any more
    if table_files is not None:
        for path in sorted(table_files - set(OutputFiles(storage).names())):
            report.defects.append(f"the snapshot reads {storage.display(path)}, which is not in the output's folder")
    data = sorted(table_files) if table_files is not None else held.names()
    files = [(p, False) for p in data] + [(p, True) for p in held.names(REJECTS_DIR)]
    expected = {k: identity(manifest.metadata, k) for k in VECTOR_KEYS}

    def read(item: tuple[str, bool]) -> tuple[str, bool, Any, coverage.Ranges, coverage.Ranges, int, int]:
        path, is_rejects = item
        with storage.open(path) as f:
            parquet = pq.ParquetFile(f)
            meta = parquet.schema_arrow.metadata or {}
            first = None if is_rejects else layout.first_row  # the row that stands for its record
            table = parquet.read(columns=["source", "row"] + ([first[0]] if first else []))
        stored_rows = table.num_rows  # every row the file holds (windows, in windowed outputs)
        if first is not None:
            import pyarrow.compute as pc

            table = table.filter(pc.equal(table[first[0]], first[1]))
        produced = json.loads(meta.get(schemas.METADATA_KEY) or b"{}")
        footer = coverage.decode(meta.get(schemas.COVERAGE_KEY))
        return path, is_rejects, produced, footer, coverage.ranges_of(table), table.num_rows, stored_rows

    with ThreadPoolExecutor(max_workers=16) as pool:
        read_files = list(pool.map(read, files))
    report.files = len(read_files)
    file_ranges = []
    for path, is_rejects, produced, footer, columns, rows, stored_rows in read_files:
        where = storage.display(path)
        if not isinstance(produced, dict) or produced.get("producer") != PRODUCER:
            report.defects.append(f"{where} was not written by e5-embed (no {PRODUCER} footer)")
            continue
        if not is_rejects:
            differs = [k for k in VECTOR_KEYS if identity(produced, k) != expected[k]]
            if differs:
                diffs = "; ".join(
                    f"{k}: {produced.get(k)!r}, the output's {manifest.metadata.get(k)!r}" for k in differs[:3]
                )
                report.defects.append(f"{where} was made with other settings than the output ({diffs})")
        if coverage.merge([footer]) != coverage.merge([columns]):
            report.defects.append(
                f"{where}: its footer says it holds {coverage.count(footer)} input row(s), its rows are "
                f"{coverage.count(columns)} (rows removed or added after it was written)"
            )
        repeats = coverage.overlap([columns])
        if repeats:
            report.defects.append(f"{where} holds {repeats} input row(s) twice")
        file_ranges.append(columns)
        if is_rejects:
            report.rows_rejected += rows
        else:
            report.rows_embedded += rows
            report.data_files.append(DataFile(path, False, stored_rows))
    doubled = coverage.overlap(file_ranges)
    if doubled:
        report.defects.append(f"{doubled} input row(s) are in two files: {_examples_of_doubles(file_ranges)}")
    shards, records = recorded_shards(manifest)
    report.rows_expected = sum(r.rows for r in records.values())
    proof = prove(shards, records, file_ranges, allow_remainders=True)
    if not proof.ok:
        report.defects.append(f"the files do not cover the recorded listing: {proof.describe()}")
    return report


def _examples_of_doubles(file_ranges: Sequence[coverage.Ranges]) -> str:
    seen: coverage.Ranges = {}
    for ranges in file_ranges:
        both = coverage.intersect(seen, ranges)
        if both:
            source, spans = next(iter(both.items()))
            return f"{source} rows {spans[0][0]}..{spans[0][1] - 1}"
        seen = coverage.merge([seen, ranges])
    return "-"

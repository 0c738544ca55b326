"""Reading sharded text: a reader that parses every record of a shard into ``schemas.RECORDS``
without ever failing on one bad record (each becomes a reject with its reason), retries transient
I/O, checks the shard did not change since it was listed, and resumes past rows already written.
Plain functions over files: the Ray Data datasource (``pipeline.backend.datasource``) is a thin
shell over ``read_shards``. Listing is ``io.listing``; decompression and lines ``io.streams``;
one record ``io.records``.

Ray's built-in ``read_json``/``read_text`` stop the whole job on one broken line
and don't expose row numbers, which stable ids and exactly-once resume need, so
shards are parsed here.
"""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import JobError, is_transient
from pipeline.io.listing import Shard, current_fingerprint
from pipeline.io.records import (
    BlockBuilder,
    FieldSpec,
    Invalid,
    check_text,
    parse_json,
    raw_decode,
    record_from_json,
    reject_row,
    title_of,
)
from pipeline.io.storage import Storage, escape_controls
from pipeline.io.streams import UTF8_BOM, CorruptStream, TooLong, shard_chunks, split_lines

logger = logging.getLogger(__name__)

DEFAULT_MAX_RECORD_BYTES = 16 << 20
TRANSIENT_ATTEMPTS = 4  # per shard, before the read task fails (and Ray retries it)


class ShardReadError(JobError):
    """A shard could not be read (I/O kept failing, or it changed since it was listed)."""


def _is_transient(e: BaseException) -> bool:
    """I/O that may work on a retry (resets, timeouts, throttling, expired credentials). Not: an
    object replaced while it was read (s3fs ``FileExpired``: its ETag changed), which is a change."""
    if type(e).__name__ == "FileExpired":
        return False
    if is_transient(e):  # the one classification (also: a body cut mid-transfer, a failed checksum)
        return True
    return isinstance(e, OSError) and not isinstance(e, (gzip.BadGzipFile, FileNotFoundError))


class ShardReader:
    """Iterates one shard's records (dicts: row, id, text, reject_reason); never raises on bad data.

    After iteration, ``rows`` is the shard's row count (rows before the remainder when the
    compressed stream broke off) and ``remainder`` says why the rest could not be decoded.
    Transient I/O errors re-open the shard and continue after the last row (``attempts``
    times, with backoff); then ``ShardReadError``. A shard whose fingerprint differs from the
    one it was listed with is refused (``ShardReadError``).
    """

    def __init__(
        self,
        storage: Storage,
        shard: Shard,
        fields: FieldSpec,
        skip: Sequence[tuple[int, int]] = (),
        *,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        attempts: int = TRANSIENT_ATTEMPTS,
        backoff_s: float = 1.0,
        check_fingerprint: bool = True,
    ):
        self.storage, self.shard, self.fields = storage, shard, fields
        self.skip = tuple(skip)
        self.max_record_bytes = max_record_bytes
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.check_fingerprint = check_fingerprint
        self.rows: int | None = None
        self.remainder: str | None = None

    def __iter__(self) -> Iterator[dict]:
        done = _RowFilter(self.skip)
        next_row = 0  # rows below this were yielded (or skipped) already
        for attempt in range(1, self.attempts + 1):
            try:
                # on every attempt: a re-opened shard must be the one whose earlier rows were read
                self._verify_fingerprint()
                for row, rec in self._rows(start=next_row):
                    next_row = row + 1
                    if rec is not None and not done(row):
                        yield rec
                self._verify_fingerprint()  # and at the end: nothing replaced it while it was read
                self.rows = next_row
                return
            except CorruptStream as e:
                self._verify_fingerprint()
                self.rows, self.remainder = next_row, str(e)
                logger.warning("%s: unreadable after row %d: %s", escape_controls(self.shard.path), next_row, e)
                return
            except ShardReadError:
                raise
            except Exception as e:
                if not _is_transient(e) or attempt == self.attempts:
                    raise ShardReadError(
                        f"cannot read shard {self.shard.uri} (after {attempt} attempt(s), "
                        f"row {next_row}): {type(e).__name__}: {e}"
                    ) from e
                logger.warning(
                    "%s: %s: %s; re-opening at row %d (attempt %d/%d)",
                    escape_controls(self.shard.path),
                    type(e).__name__,
                    e,
                    next_row,
                    attempt + 1,
                    self.attempts,
                )
                time.sleep(self.backoff_s * 2 ** (attempt - 1))

    def _verify_fingerprint(self) -> None:
        if not self.check_fingerprint:
            return  # an unversioned shard still has its size checked
        now = current_fingerprint(self.storage, self.shard.path)
        if now != self.shard.fingerprint:
            raise ShardReadError(
                f"input shard {self.shard.uri} changed after it was listed "
                f"(size/version {self.shard.fingerprint} -> {now}); rerun to pick it up"
            )

    def _rows(self, start: int) -> Iterator[tuple[int, dict | None]]:
        """(row, record) from ``start`` on; record None for rows before ``start`` (not parsed)."""
        if self.shard.format == "parquet":
            yield from self._parquet_rows(start)
            return
        with self.storage.open(self.shard.path) as f:
            for row, line in enumerate(split_lines(shard_chunks(f, self.shard), self.max_record_bytes)):
                if row < start:
                    yield row, None
                    continue
                if row == 0 and isinstance(line, bytes) and line.startswith(UTF8_BOM):
                    line = line[len(UTF8_BOM) :]
                yield row, self._parse_line(line, row)

    def _parse_line(self, line: bytes | TooLong, row: int) -> dict:
        if isinstance(line, TooLong):
            return reject_row(
                row, f"record larger than --max-record-bytes ({line.size} > {self.max_record_bytes} bytes)"
            )
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as e:
            return reject_row(row, f"invalid UTF-8 at byte {e.start}")
        if self.shard.format == "text":
            text, reason = check_text(decoded, "line")
            return {"row": row, "id": None, "text": text, "reject_reason": reason}
        # The common case: one value, nothing around it; anything else takes json.loads' path and its
        # reject reasons. (Nesting right at Python's recursion limit may parse here one or two levels
        # deeper than json.loads would, as it always varied with the caller's stack depth.)
        try:
            obj, end = raw_decode(decoded)
            if end != len(decoded):
                obj = parse_json(decoded)
        except Exception:
            obj = parse_json(decoded)
        if isinstance(obj, Invalid):
            return reject_row(row, obj.reason)
        try:
            record_id, text, reason = record_from_json(obj, self.fields)
            title = title_of(obj, self.fields) if reason is None else None
        except Exception as e:  # a record must never fail its shard
            return reject_row(row, f"unusable record: {type(e).__name__}: {str(e)[:200]}")
        return {"row": row, "id": record_id, "text": text, "title": title, "reject_reason": reason}

    def _parquet_rows(self, start: int) -> Iterator[tuple[int, dict | None]]:
        row = 0
        with self.storage.open(self.shard.path) as f:
            try:
                pf = pq.ParquetFile(f)
                names = set(pf.schema_arrow.names)
                total = pf.metadata.num_rows
            except pa.ArrowInvalid as e:
                raise CorruptStream(f"parquet: {e}") from e
            if self.fields.text_field not in names:
                for row in range(total):
                    yield (
                        row,
                        {
                            "row": row,
                            "id": None,
                            "text": None,
                            "reject_reason": f"parquet shard has no column {self.fields.text_field!r}",
                        },
                    )
                return
            wanted = [
                c for c in (self.fields.id_field, self.fields.text_field, self.fields.title_field) if c and c in names
            ]
            batches = pf.iter_batches(columns=wanted, batch_size=8192)
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
                batch, oversized = self._cut_oversized(batch)
                for i, obj in enumerate(batch.to_pylist()):
                    if row < start:
                        yield row, None
                    elif i in oversized:  # never turned into a Python string, never tokenized
                        reason = (
                            f"record larger than --max-record-bytes ({oversized[i]} > {self.max_record_bytes} bytes)"
                        )
                        yield row, {"row": row, "id": None, "text": None, "title": None, "reject_reason": reason}
                    else:
                        try:
                            record_id, text, reason = record_from_json(obj, self.fields)
                            title = title_of(obj, self.fields) if reason is None else None
                        except Exception as e:
                            record_id, text, reason = None, None, f"unusable record: {type(e).__name__}"
                            title = None
                        yield row, {"row": row, "id": record_id, "text": text, "title": title, "reject_reason": reason}
                    row += 1

    def _cut_oversized(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, dict[int, int]]:
        """Rows whose text (and title) bytes pass ``max_record_bytes``: their values nulled in the
        batch (before any Python string is made of them) and their sizes by index, to be rejects
        with that reason, as in the line formats. (Parquet keeps a value inside one page: reading
        it cannot be avoided, embedding it can.)"""
        sizes = None
        for name in (self.fields.text_field, self.fields.title_field):
            if not name or name not in batch.schema.names:
                continue
            column = batch.column(name)
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                continue
            length = pc.fill_null(pc.binary_length(column), 0).cast(pa.int64())
            sizes = length if sizes is None else pc.add(sizes, length)
        if sizes is None:
            return batch, {}
        over = pc.greater(sizes, self.max_record_bytes)
        if not pc.any(over).as_py():
            return batch, {}
        index = np.flatnonzero(over.to_numpy(zero_copy_only=False))
        found = {int(i): int(sizes[int(i)].as_py()) for i in index}
        for name in (self.fields.text_field, self.fields.title_field):
            if name and name in batch.schema.names:
                column = batch.column(name)
                nulled = pc.if_else(over, pa.nulls(len(column), column.type), column)
                batch = batch.set_column(batch.schema.get_field_index(name), name, nulled)
        return batch, found


class _RowFilter:
    """True for rows inside already-done [start, end) ranges (sorted)."""

    def __init__(self, ranges: Sequence[tuple[int, int]]):
        self._ranges = sorted(ranges)
        self._i = 0

    def __call__(self, row: int) -> bool:
        while self._i < len(self._ranges) and self._ranges[self._i][1] <= row:
            self._i += 1
        return self._i < len(self._ranges) and self._ranges[self._i][0] <= row


def read_shards(
    storage_options: Mapping[str, Any],
    shards: Sequence[Shard],
    fields: FieldSpec,
    rows_per_block: int,
    skip: Mapping[str, Sequence[tuple[int, int]]],
    *,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    on_shard_end: Callable[[Shard, int, str | None], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> Iterator[pa.Table]:
    """RECORDS-schema blocks for the shards in order; ``on_shard_end(shard, rows, remainder)`` is
    called when a shard has been read to its end (the ledger records it). ``stop()`` (the run asked
    to stop, e.g. to keep to its budget) is asked at each full block and each shard's start: the
    rows read so far go on as one last block, the shard is left unfinished (no record: the next run
    resumes it from the output's footers), and nothing more is read."""
    builder = BlockBuilder(rows_per_block, fields)
    for shard in shards:
        if stop is not None and stop():
            break
        reader = ShardReader(
            Storage(shard.uri, storage_options),
            shard,
            fields,
            skip.get(shard.path, ()),
            max_record_bytes=max_record_bytes,
        )
        for rec in reader:
            row = rec["row"]
            record_id = rec["id"]
            builder.add(
                f"{shard.relpath}:{row}" if record_id is None else record_id,
                shard.path,
                row,
                rec["reject_reason"],
                rec["text"],
                rec.get("title"),
            )
            if builder.full():
                yield builder.take()
                if stop is not None and stop():
                    return
        if on_shard_end is not None:
            on_shard_end(shard, int(reader.rows or 0), reader.remainder)
    if len(builder):
        yield builder.take()

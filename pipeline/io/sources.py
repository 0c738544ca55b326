"""Reading sharded text: a reader that parses every record of a shard into ``schemas.RECORDS``
without ever failing on one bad record (each becomes a reject with its reason), retries transient
I/O, checks the shard did not change since it was listed, and resumes past rows already written.
Plain functions over files: the Ray Data datasource (``pipeline.backend.datasource``) is a thin
shell over ``read_shards``. Listing is ``io.listing``; each format's rows ``io.formats``;
decompression and lines ``io.streams``; one record ``io.records``.

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

import pyarrow as pa

from pipeline.errors import JobError, is_transient
from pipeline.io.formats import Row, format_of
from pipeline.io.listing import current_fingerprint
from pipeline.io.records import BlockBuilder, FieldSpec
from pipeline.io.shard import Shard
from pipeline.io.storage import Storage, escape_controls
from pipeline.io.streams import CorruptStream

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

    def _rows(self, start: int) -> Iterator[Row]:
        """(row, record) from ``start`` on; record None for rows before ``start`` (not parsed)."""
        return format_of(self.shard).rows(self.storage, self.shard, self.fields, start, self.max_record_bytes)


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

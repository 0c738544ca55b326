"""What the line formats share: one record per line (``\n``, ``\r\n`` or ``\r``), raw or
compressed, a UTF-8 byte-order mark dropped, an over-long line or invalid UTF-8 a reject; the
format parses one decoded line."""

from __future__ import annotations

from collections.abc import Iterator

from pipeline.io.formats.base import Row
from pipeline.io.records import FieldSpec, reject_row
from pipeline.io.shard import Shard
from pipeline.io.storage import Storage
from pipeline.io.streams import UTF8_BOM, TooLong, shard_chunks, split_lines


class LineFormat:
    name = ""
    extensions: tuple[str, ...] = ()
    counts_rows = False  # lines are counted by reading them

    def parse(self, decoded: str, row: int, fields: FieldSpec) -> dict:
        """One line's record or reject."""
        raise NotImplementedError

    def rows(
        self, storage: Storage, shard: Shard, fields: FieldSpec, start: int, max_record_bytes: int
    ) -> Iterator[Row]:
        with storage.open(shard.path) as f:
            for row, line in enumerate(split_lines(shard_chunks(f, shard), max_record_bytes)):
                if row < start:
                    yield row, None
                    continue
                if row == 0 and isinstance(line, bytes) and line.startswith(UTF8_BOM):
                    line = line[len(UTF8_BOM) :]
                yield row, self._record(line, row, fields, max_record_bytes)

    def _record(self, line: bytes | TooLong, row: int, fields: FieldSpec, max_record_bytes: int) -> dict:
        if isinstance(line, TooLong):
            return reject_row(row, f"record larger than --max-record-bytes ({line.size} > {max_record_bytes} bytes)")
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as e:
            return reject_row(row, f"invalid UTF-8 at byte {e.start}")
        return self.parse(decoded, row, fields)

    def count(self, storage: Storage, shard: Shard) -> int | None:
        return None

"""What the readers learned about each input shard: read to its end, how many rows, and what
could not be decoded. One small JSON object per shard under ``_shards/`` in the output.

A read task writes a shard's record when it reaches the shard's end, so the completeness proof
knows each shard's row count without reading any input again. The record carries the
fingerprint the shard was read at; a record for another fingerprint does not count.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.errors import UsageError
from pipeline.io.shard import Shard
from pipeline.io.storage import Storage
from pipeline.ledger.lease import LeaseFence

logger = logging.getLogger(__name__)

SHARDS_DIR = "_shards"


@dataclass(frozen=True, kw_only=True)
class ShardRecord:
    path: str  # the shard's path as the ``source`` column holds it
    size: int
    version: str
    rows: int  # rows read (records and rejects); with a remainder, the rows before it
    remainder: str | None = None  # why the rest of the shard could not be decoded (unknown row count)

    @property
    def fingerprint(self) -> tuple[int, str]:
        return (self.size, self.version)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "ShardRecord":
        """A record; ValueError/TypeError when the bytes are not a whole, well-typed record."""
        data = json.loads(raw)
        record = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        typed = (
            isinstance(record.path, str)
            and isinstance(record.version, str)
            and all(type(v) is int and v >= 0 for v in (record.size, record.rows))
            and (record.remainder is None or isinstance(record.remainder, str))
        )
        if not typed:
            raise TypeError("a field of the wrong type")
        return record


def record_name(path: str) -> str:
    return hashlib.sha1(path.encode()).hexdigest()[:24] + ".json"


@dataclass(frozen=True)
class ShardLog:
    """Where read tasks write shard records (the output folder), behind the run's lease fence."""

    output_uri: str
    storage_options: Mapping[str, Any]
    fence: LeaseFence | None = None

    def __call__(self, shard: Shard, rows: int, remainder: str | None) -> None:
        """Record that ``shard`` was read to its end (a read task calls this)."""
        record = ShardRecord(path=shard.path, size=shard.size, version=shard.version, rows=rows, remainder=remainder)
        storage = Storage(self.output_uri, self.storage_options)
        if self.fence is not None:
            self.fence.check()
        storage.write_bytes_atomic(storage.join(SHARDS_DIR, record_name(record.path)), record.to_json())


def read_records(storage: Storage, paths: set[str] | None = None) -> dict[str, ShardRecord]:
    """Every shard record under ``_shards/`` (only those for ``paths`` when given), by shard path."""
    listed = [p for p, _ in storage.list_files(SHARDS_DIR)]
    if paths is not None:
        wanted = {record_name(p) for p in paths}
        listed = [p for p in listed if p.rsplit("/", 1)[-1] in wanted]

    def read(path: str) -> ShardRecord | None:
        try:
            return ShardRecord.from_json(storage.read_bytes(path))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise UsageError(
                f"the shard record {storage.display(path)} is damaged ({type(e).__name__}: {str(e)[:100]}); "
                "delete it (its shard is read again to rewrite it) or rerun with --overwrite"
            ) from e

    with ThreadPoolExecutor(max_workers=16) as pool:
        records = [r for r in pool.map(read, listed) if r is not None]
    return {r.path: r for r in records}

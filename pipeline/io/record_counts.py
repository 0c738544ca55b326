"""Exact record totals where the format stores them: Parquet footers hold each file's row count.

Text and JSONL shards say nothing about their records until read, so a run over them states its
progress in input bytes; a run over Parquet shards can state it in records. Footers are read by a
small thread pool (one ranged read per shard), off the job's path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow.parquet as pq

from pipeline.io.sources import Shard
from pipeline.io.storage import Storage

logger = logging.getLogger(__name__)

FOOTER_READERS = 16


def parquet_rows(
    storage_options: Mapping[str, Any],
    shards: Sequence[Shard],
    *,
    workers: int = FOOTER_READERS,
    stop: threading.Event | None = None,
) -> int | None:
    """The shards' total rows from their Parquet footers; None unless every shard is Parquet, or when
    ``stop`` is set before the count is complete. A footer that cannot be read raises."""
    if not shards or any(s.format != "parquet" for s in shards):
        return None

    def rows(shard: Shard) -> int:
        storage = Storage(shard.uri, storage_options)
        with storage.open(shard.path) as f:
            return pq.ParquetFile(f).metadata.num_rows

    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="e5-embed-footers")
    try:
        total = 0
        for future in [pool.submit(rows, s) for s in shards]:
            if stop is not None and stop.is_set():
                return None
            total += future.result()
        return total
    finally:
        pool.shutdown(wait=False, cancel_futures=True)

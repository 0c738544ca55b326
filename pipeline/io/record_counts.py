"""Exact record totals where the format stores them (``Format.counts_rows``: Parquet footers hold
each file's row count).

Text and JSONL shards say nothing about their records until read, so a run over them states its
progress in input bytes; a run over Parquet shards can state it in records. Counts are read by a
few daemon threads (one ranged read per shard), off the job's path: they hold no per-shard state
beyond a counter, stop between shards when asked, and never hold up the driver's exit.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.io.formats import format_of
from pipeline.io.shard import Shard
from pipeline.io.storage import Storage

COUNT_READERS = 16


def _stored_rows(storage_options: Mapping[str, Any], shard: Shard) -> int:
    return format_of(shard).count(Storage(shard.uri, storage_options), shard)


def exact_rows(
    storage_options: Mapping[str, Any],
    shards: Sequence[Shard],
    *,
    workers: int = COUNT_READERS,
    stop: threading.Event | None = None,
) -> int | None:
    """The shards' total rows as their files store them; None unless every shard's format counts
    its rows, or when ``stop`` is set before the count is complete. A count that cannot be read raises."""
    if not shards or not all(format_of(s).counts_rows for s in shards):
        return None
    stop = stop or threading.Event()
    pending = iter(shards)
    lock = threading.Lock()
    totals: list[int] = []
    errors: list[BaseException] = []

    def count() -> None:
        rows = 0
        try:
            while not stop.is_set():
                with lock:
                    shard = None if errors else next(pending, None)
                if shard is None:
                    break
                rows += _stored_rows(storage_options, shard)
        except Exception as e:
            with lock:
                errors.append(e)
        with lock:
            totals.append(rows)

    threads = [
        threading.Thread(target=count, name=f"e5-embed-counts-{i}", daemon=True)
        for i in range(max(1, min(workers, len(shards))))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return None if stop.is_set() else sum(totals)

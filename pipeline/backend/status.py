"""The driver's periodic status line: work counted where it happens, the encode rate, an ETA, and
(with a budget) the projected encoder-hours, also set as gauges."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.backend import metrics
from pipeline.backend.progress import Telemetry
from pipeline.planning.budget import Budget, Projection, over, project
from pipeline.stages.encoder_clock import encoder_split

logger = logging.getLogger(__name__)


def status_line(
    values: Mapping[str, int],
    *,
    total_bytes: int,
    total_records: int | None,
    elapsed_s: float,
    records_done: int = 0,
    recent: Mapping[str, float] | None = None,
) -> str:
    """``progress: …`` for the driver's log: work counted where it happens, the encode rate, an ETA.

    Three counts, apart: records tokenized, records encoded (out of the encode stage) and records
    committed (in published files, embedded + rejected) — a file is published every
    ``--rows-per-file`` rows, so commits trail encoding. tokens/s and the ETA come from the encode
    stage's rate over a recent window (``recent``: per-second rates of ``encoded`` and
    ``encoded_tokens``; the whole run's when not given). The records to do are exact with
    ``total_records`` (Parquet footers: the records of the shards this run reads, less
    ``records_done`` that earlier runs wrote), else estimated from the share of input bytes read.
    Once every record is read and encoded, the ETA says it waits for the last files.
    """
    recent = recent or _rates([(elapsed_s, values)], since=(0.0, {}))  # no window given: the whole run's
    read_rows, encoded = values.get("read_rows", 0), values.get("encoded", 0)
    committed = values.get("embedded", 0) + values.get("rejected", 0)
    todo = records_to_do(values, total_bytes, total_records, records_done)
    if total_records:
        share = read_rows / total_records
        unit = "input records"
    else:
        share = values.get("read_bytes", 0) / total_bytes if total_bytes else 0.0
        unit = "input bytes"
    if share >= 1 and encoded >= read_rows - records_done:
        eta = f"encoding done; writing the last files ({max(0, encoded - committed):,} records to commit)"
    elif todo is not None and recent.get("encoded", 0) > 0:
        eta = _duration(max(0.0, todo - encoded) / recent["encoded"])
    else:
        eta = "unknown"
    of = f" of {int(todo):,}" if total_records else ""
    split = encoder_split(dict(values))
    busy = "" if split is None else f" (encoder device busy {split['device_busy_share']:.0%})"
    return (
        f"progress: {values.get('tokenized', 0):,} tokenized, {encoded:,} encoded, {committed:,} committed "
        f"({values.get('embedded', 0):,} embedded, {values.get('rejected', 0):,} rejected){of} records, "
        f"{read_rows:,} read ({min(share, 1.0):.0%} of {unit}), {recent.get('encoded_tokens', 0):,.0f} tokens/s "
        f"encoding{busy}, ETA {eta}"
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class RunMonitor:
    """The run's monitor: a driver thread that logs ``status_line`` every ``interval_s`` until stopped, and with a
    budget projects the run's encoder-hours on every check and asks the run to stop (``on_over``,
    once) before it would pass the cap: the run's budget keeper as well as its status line.

    ``count_records`` (if given) runs once on a thread of its own; when it returns a total, the
    lines state progress in records from then on. If it fails, they keep to bytes (said once).
    """

    def __init__(
        self,
        telemetry: Telemetry,
        *,
        total_bytes: int,
        count_records: Callable[[threading.Event], int | None] | None = None,
        records_done: int = 0,
        interval_s: float = 60.0,
        budget: Budget | None = None,
        on_over: Callable[[str], None] | None = None,
    ):
        self.budget = budget  # --max-gpu-hours: projected on every check, ``on_over`` once past it
        self.on_over = on_over
        self.projection: Projection | None = None
        self._encoding_since: float | None = None
        self.telemetry = telemetry
        self.total_bytes = total_bytes
        self.total_records: int | None = None
        self.records_done = records_done
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="e5-embed-status", daemon=True)
        self._counter = (
            threading.Thread(target=self._count, args=(count_records,), name="e5-embed-record-count", daemon=True)
            if count_records is not None
            else None
        )
        self._t0 = time.monotonic()

    def __enter__(self) -> RunMonitor:
        self._thread.start()
        if self._counter is not None:
            self._counter.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        if (
            self._counter is not None and self._counter.is_alive()
        ):  # a daemon: a footer read in flight cannot hold up the exit
            self._counter.join(timeout=1)

    def _count(self, count_records: Callable[[threading.Event], int | None]) -> None:
        try:
            total = count_records(self._stop)
        except Exception as e:
            logger.warning("progress stays in input bytes: counting the input's records failed: %s", e)
            return
        if total is not None and not self._stop.is_set():
            self.total_records = total
            logger.info("input holds %s records (Parquet footers); progress counts records", f"{total:,}")

    def _run(self) -> None:
        history: collections.deque[tuple[float, Mapping[str, int]]] = collections.deque()
        tick = min(self.interval_s, BUDGET_CHECK_S) if self.budget is not None else self.interval_s
        last_line = self._t0
        while not self._stop.wait(tick):
            values = self.telemetry.snapshot()
            if values is None:
                continue
            now = time.monotonic()
            history.append((now, values))
            while len(history) > 2 and now - history[1][0] >= RATE_WINDOW_S:
                history.popleft()  # keep about RATE_WINDOW_S of snapshots (at least two)
            recent = _rates(history, since=(self._t0, {}))
            budget = self._check_budget(values, now, recent)
            if now - last_line < self.interval_s - 1e-6:
                continue
            last_line = now
            line = status_line(
                values,
                total_bytes=self.total_bytes,
                total_records=self.total_records,
                records_done=self.records_done,
                elapsed_s=now - self._t0,
                recent=recent,
            )
            logger.info("%s", line + (f"; {budget}" if budget else ""))

    def _check_budget(self, values: Mapping[str, int], now: float, recent: Mapping[str, float]) -> str:
        """Project the run's encoder-hours; past the cap, ask the run to stop (once)."""
        if self.budget is None:
            return ""
        if self._encoding_since is None and values.get("encoded", 0) > 0:
            self._encoding_since = now
        todo = records_to_do(values, self.total_bytes, self.total_records, self.records_done)
        left = None if todo is None else max(0.0, todo - values.get("encoded", 0))
        self.projection = project(
            self.budget,
            elapsed_s=now - self._t0,
            encoding_s=None if self._encoding_since is None else now - self._encoding_since,
            records_left=left,
            records_per_s=recent.get("encoded", 0.0),
            records_to_do=todo,
        )
        described = self.projection.describe(self.budget)
        run_id = self.telemetry.run_id
        metrics.set_gauge("e5_embed_budget_cap_hours", self.budget.max_hours, run_id)
        metrics.set_gauge("e5_embed_budget_spent_hours", self.projection.spent_hours, run_id)
        metrics.set_gauge("e5_embed_budget_projected_hours", self.projection.projected_hours or 0.0, run_id)
        if over(self.budget, self.projection) and self.on_over is not None:
            on_over, self.on_over = self.on_over, None
            on_over(f"{described}; {0 if left is None else int(left):,} records left")
        return described


RATE_WINDOW_S = 60.0  # tokens/s and the ETA: the encode stage's rate over about the last minute
BUDGET_CHECK_S = 2.0  # how often a run with a budget projects its cost


def records_to_do(
    values: Mapping[str, int], total_bytes: int, total_records: int | None, records_done: int
) -> float | None:
    """The records this run has to encode: exact from the footers' total, else from the share of
    input bytes read; None while nothing is read."""
    if total_records:
        return max(0, total_records - records_done)
    share = values.get("read_bytes", 0) / total_bytes if total_bytes else 0.0
    return (values.get("read_rows", 0) / share - records_done) if share > 0 else None


def _rates(
    history: Sequence[tuple[float, Mapping[str, int]]], since: tuple[float, Mapping[str, int]]
) -> dict[str, float]:
    """Per-second rates of the encode counts between the oldest kept snapshot and the newest
    (``since``, the run's start, while there is only one)."""
    (t0, first), (t1, last) = (history[0] if len(history) > 1 else since), history[-1]
    span = t1 - t0
    return {k: (last.get(k, 0) - first.get(k, 0)) / span if span > 0 else 0.0 for k in ("encoded", "encoded_tokens")}


def count_records(storage_options: Mapping[str, Any], shards: Sequence[Any], stop: threading.Event) -> int | None:
    """The shards' exact record total where the format stores it (all Parquet), for the status line."""
    from pipeline.errors import JobError
    from pipeline.io.record_counts import exact_rows
    from pipeline.io.storage import scrub

    try:
        return exact_rows(dict(storage_options), list(shards), stop=stop)
    except Exception as e:
        raise JobError(scrub(f"{type(e).__name__}: {e}", storage_options)[:500]) from e

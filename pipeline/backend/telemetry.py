"""What a running job shows operators: Prometheus metrics and the driver's periodic status line.

Read tasks, stage actors and write tasks report through a ``Telemetry`` handle (picklable: the
run id and a progress actor). Each report increments ``ray.util.metrics`` counters, which Ray
exports on every node's metrics endpoint (the dashboard's Prometheus/Grafana), and adds to the
progress actor, which the driver reads every ``--status-interval-s`` for a one-line status with
an ETA. Reports are fire-and-forget: telemetry never slows or fails the job.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.planning.budget import Budget, Projection, over, project

logger = logging.getLogger(__name__)

# name -> (description, tag keys); Prometheus shows them as ray_<name>_total
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "e5_embed_input_records": ("input records read (shards read to their end)", ()),
    "e5_embed_input_bytes": ("input bytes read (shards read to their end)", ()),
    "e5_embed_records": ("input records written, by outcome (embedded, rejected, reused)", ("outcome",)),
    "e5_embed_rejects": ("rejected records by kind of reason", ("kind",)),
    "e5_embed_tokens": ("tokens embedded (prefix and special tokens included)", ()),
    "e5_embed_windows": ("data rows written: one per record, one per window with --chunk-tokens", ()),
    "e5_embed_truncated": ("records cut at --max-length (or --max-chunks-per-record)", ()),
    "e5_embed_files": ("data and rejects files written", ()),
    "e5_embed_stage_rows": ("rows through a stage (tokenize, encode)", ("stage",)),
    "e5_embed_stage_tokens": ("tokens through a stage (encode: what the model read)", ("stage",)),
    "e5_embed_stage_seconds": ("seconds a stage spent on its batches (rate = rows / seconds)", ("stage",)),
    "e5_embed_oom_splits": ("encode micro-batches split after a device out-of-memory", ()),
}
PROGRESS_KEYS = (
    "read_rows",
    "read_bytes",
    "tokenized",  # records out of the tokenize stage
    "encoded",  # records out of the encode stage (rejects pass through it too)
    "encoded_tokens",
    "embedded",  # committed: in published files
    "rejected",
    "tokens",
    "windows",
    "oom_splits",
)
# stage name -> the progress key its rows count under
STAGE_PROGRESS = {"tokenize": "tokenized", "chunktokenize": "tokenized", "encode": "encoded"}


class _Counters:
    """This process's ``ray.util.metrics`` counters (created on first use, once per process)."""

    _instance: _Counters | None = None

    def __init__(self) -> None:
        from ray.util.metrics import Counter

        self.counters = {
            name: Counter(name, description=desc, tag_keys=("run_id", *tags)) for name, (desc, tags) in METRICS.items()
        }

    @classmethod
    def get(cls) -> _Counters:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance


def _progress_actor_class():
    import ray

    @ray.remote(num_cpus=0)
    class Progress:
        def __init__(self) -> None:
            self.values = dict.fromkeys(PROGRESS_KEYS, 0)

            self.first_seen: dict[str, float] = {}

        def add(self, values: Mapping[str, int]) -> None:
            for k, v in values.items():
                self.values[k] = self.values.get(k, 0) + int(v)

        def seen(self, what: str, at: float) -> None:
            self.first_seen[what] = min(at, self.first_seen.get(what, at))

        def snapshot(self) -> dict[str, int]:
            return dict(self.values)

        def first(self) -> dict[str, float]:
            return dict(self.first_seen)

    return Progress


@dataclass
class Telemetry:
    """The handle tasks and actors report through."""

    run_id: str
    progress: Any = None  # the progress actor (None: metrics only)

    @classmethod
    def start(cls, run_id: str) -> Telemetry:
        return cls(run_id=run_id, progress=_progress_actor_class().remote())

    def _inc(self, name: str, value: float, **tags: str) -> None:
        if value:
            try:
                _Counters.get().counters[name].inc(value, tags={"run_id": self.run_id, **tags})
            except Exception as e:  # never fail the job over a metric
                logger.debug("metric %s not recorded: %s", name, e)

    def _tell(self, method: str, *args: Any) -> None:
        """Fire-and-forget a call on the progress actor."""
        if self.progress is not None:
            try:
                getattr(self.progress, method).remote(*args)
            except Exception as e:
                logger.debug("progress not recorded: %s", e)

    def _ask(self, method: str, timeout_s: float) -> Any:
        """A call on the progress actor, waited for; None when there is no answer."""
        import ray

        if self.progress is None:
            return None
        try:
            return ray.get(getattr(self.progress, method).remote(), timeout=timeout_s)
        except Exception as e:
            logger.debug("no progress snapshot: %s", e)
            return None

    def _progress(self, **values: int) -> None:
        self._tell("add", values)

    def shard_read(self, rows: int, size: int) -> None:
        self._inc("e5_embed_input_records", rows)
        self._inc("e5_embed_input_bytes", size)
        self._progress(read_rows=rows, read_bytes=size)

    def written(self, counters, outcome: str = "embedded") -> None:
        """A write task's ``Counters``; ``outcome="reused"`` for rows whose vector was carried over
        (counted apart: nothing was encoded for them; the carry-over pass has no progress actor)."""
        if outcome == "reused":
            self._inc("e5_embed_records", counters.rows_written, outcome="reused")
            return
        self._inc("e5_embed_records", counters.rows_written, outcome="embedded")
        self._inc("e5_embed_records", counters.rows_rejected, outcome="rejected")
        for kind, n in counters.reject_kinds.items():
            self._inc("e5_embed_rejects", n, kind=kind)
        self._inc("e5_embed_tokens", counters.tokens)
        self._inc("e5_embed_windows", counters.chunks)
        self._inc("e5_embed_truncated", counters.truncated)
        self._inc("e5_embed_files", counters.data_files + (1 if counters.rows_rejected else 0))
        self._progress(
            embedded=counters.rows_written,
            rejected=counters.rows_rejected,
            tokens=counters.tokens,
            windows=counters.chunks,
        )

    def seen(self, what: str) -> None:
        """The wall-clock time ``what`` first happened (e.g. the first batch reaching a stage)."""
        self._tell("seen", what, time.time())

    def first_seen(self, timeout_s: float = 10.0) -> dict[str, float]:
        return self._ask("first", timeout_s) or {}

    def stage_batch(self, stage: str, rows: int, seconds: float, oom_splits: int = 0, tokens: int = 0) -> None:
        """One batch out of a stage: counted where the work happens, not when its file is committed."""
        self._inc("e5_embed_stage_rows", rows, stage=stage)
        self._inc("e5_embed_stage_tokens", tokens, stage=stage)
        self._inc("e5_embed_stage_seconds", seconds, stage=stage)
        self._inc("e5_embed_oom_splits", oom_splits)
        values = {STAGE_PROGRESS.get(stage, stage): rows, "oom_splits": oom_splits}  # oom: the run record too
        if stage == "encode":
            values["encoded_tokens"] = tokens
        self._progress(**{k: v for k, v in values.items() if v})

    def snapshot(self, timeout_s: float = 10.0) -> dict[str, int] | None:
        return self._ask("snapshot", timeout_s)

    def stop(self) -> None:
        import ray

        if self.progress is not None:
            ray.kill(self.progress)
            self.progress = None


class TimedStage:
    """Wraps a stage for Ray: builds it once per actor and reports each batch's rows and time."""

    stage_name = "stage"

    def __init__(self, stage_cls: type, telemetry: Telemetry | None, **kwargs: Any):
        self.stage = stage_cls(**kwargs)
        setup = getattr(self.stage, "setup", None)
        if setup is not None:  # the expensive part (weights, compilation) when the actor starts
            setup()
        self.telemetry = telemetry
        self._oom_seen = 0
        self._called = False

    def __call__(self, batch):
        if self.telemetry is not None and not self._called:
            self._called = True
            self.telemetry.seen(self.stage_name)
        t0 = time.perf_counter()
        out = self.stage(batch)
        if self.telemetry is not None:
            oom = int(getattr(self.stage, "oom_splits", 0))
            tokens = _tokens(out) if self.stage_name == "encode" else 0
            self.telemetry.stage_batch(
                self.stage_name, batch.num_rows, time.perf_counter() - t0, oom - self._oom_seen, tokens
            )
            self._oom_seen = oom
        return out


def _tokens(table) -> int:
    """The tokens a batch's ``n_tokens`` column holds (per row, or per window in chunked runs)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if "n_tokens" not in table.column_names:
        return 0
    column = table["n_tokens"]
    if pa.types.is_list(column.type):
        column = pc.list_flatten(column)
    return int(pc.sum(column).as_py() or 0)


def timed(stage_cls: type, name: str) -> type:
    """A TimedStage subclass named after the stage (Ray Data names operators by class)."""
    return type(stage_cls.__name__, (TimedStage,), {"stage_name": name, "__module__": __name__})


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
    return (
        f"progress: {values.get('tokenized', 0):,} tokenized, {encoded:,} encoded, {committed:,} committed "
        f"({values.get('embedded', 0):,} embedded, {values.get('rejected', 0):,} rejected){of} records, "
        f"{read_rows:,} read ({min(share, 1.0):.0%} of {unit}), {recent.get('encoded_tokens', 0):,.0f} tokens/s "
        f"encoding, ETA {eta}"
    )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class StatusReporter:
    """A driver thread that logs ``status_line`` every ``interval_s`` until stopped.

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

    def __enter__(self) -> StatusReporter:
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
        )
        described = self.projection.describe(self.budget)
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

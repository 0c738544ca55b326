"""The handle read tasks, stage actors and write tasks report through, and the run's progress actor.

``Telemetry`` is picklable (the run id and the actor's handle). Each report increments the job's
Prometheus counters (``pipeline.backend.metrics``) and adds to the progress actor: the counts the
driver's status line reads (``pipeline.backend.status``) and the spans of work the run's timeline
is made of (``pipeline.backend.timeline``). Reports are fire-and-forget: telemetry never slows or
fails the job.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.backend import metrics
from pipeline.stages.encoder_clock import KEYS as ENCODER_KEYS
from pipeline.stages.spec import ENCODE, TOKENIZE

logger = logging.getLogger(__name__)

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
    *ENCODER_KEYS,
)
# stage name -> the progress key its rows count under
STAGE_PROGRESS = {TOKENIZE: "tokenized", ENCODE: "encoded"}


def _progress_actor_class():
    import ray

    @ray.remote(num_cpus=0)
    class Progress:
        """The run's counts and work spans, added to by every task and actor (fire-and-forget)."""

        def __init__(self) -> None:
            self.values = dict.fromkeys(PROGRESS_KEYS, 0)
            self.first_seen: dict[str, float] = {}
            self.spans: dict[str, WorkSpans] = {}
            self.calls = 0

        def add(self, values: Mapping[str, int]) -> None:
            self.calls += 1
            for k, v in values.items():
                self.values[k] = self.values.get(k, 0) + int(v)

        def worked(self, role: str, worker: str, started: float, ended: float) -> None:
            self.calls += 1
            self.spans.setdefault(role, WorkSpans()).add(worker, started, ended)

        def batch(self, values: Mapping[str, int], role: str, worker: str, started: float, ended: float) -> None:
            self.add(values)
            self.spans.setdefault(role, WorkSpans()).add(worker, started, ended)

        def seen(self, what: str, at: float) -> None:
            self.calls += 1
            self.first_seen[what] = min(at, self.first_seen.get(what, at))

        def snapshot(self) -> dict[str, int]:
            return dict(self.values)

        def first(self) -> dict[str, float]:
            return dict(self.first_seen)

        def timeline(self) -> dict[str, Any]:
            return {"roles": {k: v.as_dict() for k, v in self.spans.items()}, "progress_calls": self.calls}

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
        metrics.inc(name, value, self.run_id, **tags)

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

    def worked(self, role: str, started: float, ended: float) -> None:
        """One span of work (wall clock) of a read task, a write task or a stage's batch, for the
        run's timeline (``pipeline.backend.timeline``)."""
        self._tell("worked", role, _worker(), started, ended)

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

    def stage_batch(
        self,
        stage: str,
        rows: int,
        started: float,
        ended: float,
        oom_splits: int = 0,
        tokens: int = 0,
        extra: Mapping[str, int] | None = None,
    ) -> None:
        """One batch out of a stage (wall-clock start and end): counted where the work happens, not
        when its file is committed; one call on the progress actor (counts and the timeline's span)."""
        self._inc("e5_embed_stage_rows", rows, stage=stage)
        self._inc("e5_embed_stage_tokens", tokens, stage=stage)
        self._inc("e5_embed_stage_seconds", ended - started, stage=stage)
        self._inc("e5_embed_oom_splits", oom_splits)
        values = {STAGE_PROGRESS.get(stage, stage): rows, "oom_splits": oom_splits}  # oom: the run record too
        if stage == ENCODE:
            values["encoded_tokens"] = tokens
        values.update(extra or {})  # the encoder's own clocks (pipeline.stages.encoder_clock.KEYS)
        self._tell("batch", {k: v for k, v in values.items() if v}, stage, _worker(), started, ended)

    def timeline(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Each role's spans so far (``WorkSpans.as_dict``) and the progress actor's calls."""
        return self._ask("timeline", timeout_s) or {}

    def snapshot(self, timeout_s: float = 10.0) -> dict[str, int] | None:
        return self._ask("snapshot", timeout_s)

    def stop(self) -> None:
        import ray

        if self.progress is not None:
            ray.kill(self.progress)
            self.progress = None


@dataclass
class WorkSpans:
    """The spans of one role's work (read, tokenize, encode, write): busy seconds, how many, the
    first start and last end (wall clock), and the workers (processes) that did it."""

    busy_s: float = 0.0
    spans: int = 0
    first: float | None = None
    last: float | None = None
    workers: set[str] = field(default_factory=set)

    def add(self, worker: str, started: float, ended: float) -> None:
        self.busy_s += max(0.0, ended - started)
        self.spans += 1
        self.first = started if self.first is None else min(self.first, started)
        self.last = ended if self.last is None else max(self.last, ended)
        self.workers.add(worker)

    def as_dict(self) -> dict[str, Any]:
        return {
            "busy_s": round(self.busy_s, 3),
            "spans": self.spans,
            "first": self.first,
            "last": self.last,
            "workers": len(self.workers),
        }


@functools.cache
def _worker() -> str:
    """This process, as the timeline counts workers (once per process: it is asked on every batch)."""
    return f"{socket.gethostname()}:{os.getpid()}"

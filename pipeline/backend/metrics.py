"""The job's Prometheus metrics: ``ray.util.metrics`` counters and gauges, one set per process.

Ray exports them on every node's metrics endpoint (the dashboard's Prometheus/Grafana); counters
show as ``ray_<name>_total``, gauges as ``ray_<name>``. Recording never fails the job.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

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
# name -> (description, tag keys): the last value the driver set (a run with a budget)
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "e5_embed_budget_spent_hours": ("encoder-hours (GPU-hours on GPUs) spent so far, with --max-gpu-hours", ()),
    "e5_embed_budget_projected_hours": ("encoder-hours the run projects in all (0 during warm-up)", ()),
    "e5_embed_budget_cap_hours": ("the run's cap in encoder-hours (--max-gpu-hours, or --max-cost / price)", ()),
}


class ProcessMetrics:
    """This process's metric objects, made on first use under a lock (read tasks, stage actors and
    the driver's status thread report from several threads); they live as long as the process."""

    _instance: ProcessMetrics | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge

        self.counters = {
            name: Counter(name, description=desc, tag_keys=("run_id", *tags)) for name, (desc, tags) in METRICS.items()
        }
        self.gauges = {
            name: Gauge(name, description=desc, tag_keys=("run_id", *tags)) for name, (desc, tags) in GAUGES.items()
        }

    @classmethod
    def get(cls) -> ProcessMetrics:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance


def inc(name: str, value: float, run_id: str, **tags: str) -> None:
    """Add ``value`` to counter ``name`` (nothing for 0)."""
    if value:
        _record("inc", name, value, {"run_id": run_id, **tags})


def set_gauge(name: str, value: float, run_id: str, **tags: str) -> None:
    _record("set", name, value, {"run_id": run_id, **tags})


def _record(how: str, name: str, value: float, tags: dict[str, Any]) -> None:
    try:
        metrics = ProcessMetrics.get()
        metric = metrics.counters[name] if how == "inc" else metrics.gauges[name]
        getattr(metric, how)(value, tags=tags)
    except Exception as e:  # never fail the job over a metric
        logger.debug("metric %s not recorded: %s", name, e)

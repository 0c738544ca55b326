"""Where a run's wall time went: each role's busy and idle time, and what Ray Data waited on.

Three independent sources, side by side:

- **The job's own timers** (``progress.WorkSpans``): every read task, stage batch and write task
  tells the progress actor its wall-clock span. A role's ``busy_s`` over ``workers x window_s`` is
  how busy its processes were; ``idle_s`` is the rest (waiting for input, for output room, or for
  a CPU).
- **The encoder's own clocks** (``pipeline.stages.encoder_clock``): CUDA events per micro-batch
  (host-to-device copy, compute, device-to-host), the host's time between them and the actors'
  wait for their next batch: where the GPU waits, and its busy share, in every run's record.
- **Ray Data's operator stats** (``Dataset._get_stats_summary`` after the write): per operator,
  the task time, the time tasks waited to be scheduled (``scheduling_wait_s``: a worker or a CPU
  reservation), the time the executor held back submissions (``submission_backpressure_s``: the
  resource budget or a full downstream queue) and outputs (``output_backpressure_s``).

Nothing here changes the run: a timeline that cannot be read is said (``unavailable``), never a
failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pipeline.stages.spec import ENCODE, TOKENIZE

logger = logging.getLogger(__name__)

ROLES = ("read", TOKENIZE, ENCODE, "write")
TASK_ROLES = ("read", "write")  # Ray tasks on whichever worker is free, not a pool held for the run
# Ray Data's per-operator metrics the timeline keeps (extra_metrics key -> timeline key)
OPERATOR_METRICS = {
    "task_scheduling_time_s": "scheduling_wait_s",
    "task_submission_backpressure_time": "submission_backpressure_s",
    "task_output_backpressure_time": "output_backpressure_s",
    "function_body_time_s": "udf_s",
    "num_tasks_finished": "tasks",
}


def operator_stats(dataset: Any) -> list[dict[str, Any]]:
    """Ray Data's per-operator stats of the dataset ``write_datasink`` executed, in pipeline order.

    ``Dataset._write_ds`` and ``_get_stats_summary`` are Ray Data internals (2.60): a Ray without
    them gives an empty list, said in the log."""
    try:
        summary = dataset._write_ds._get_stats_summary()
    except Exception as e:
        logger.info("Ray Data's operator stats are not available here (%s): the timeline has the job's own", e)
        return []
    chain = []
    while summary is not None:
        chain.append(summary)
        summary = summary.parents[0] if summary.parents else None
    out = []
    for summary in reversed(chain):  # the read first
        extra = summary.extra_metrics or {}
        for op in summary.operators_stats:
            row: dict[str, Any] = {
                "operator": op.operator_name,
                "span_s": _span(op.earliest_start_time, op.latest_end_time),
                "task_s": round(float(getattr(op.wall_time, "sum", 0.0) or 0.0), 3),
                "task_cpu_s": round(float(getattr(op.cpu_time, "sum", 0.0) or 0.0), 3),
            }
            if len(summary.operators_stats) == 1:  # the summary's extra metrics are this operator's
                row |= {key: _number(extra.get(name)) for name, key in OPERATOR_METRICS.items()}
                row["tasks"] = None if row["tasks"] is None else int(row["tasks"])
            out.append(row)
    return out


def build(
    spans: Mapping[str, Any],
    operators: list[dict[str, Any]],
    *,
    window_s: float,
    cpus: float,
    encoder: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's timeline: ``spans`` from ``Telemetry.timeline()``, ``operators`` from
    ``operator_stats``, over the pipeline's ``window_s`` on ``cpus`` CPUs; ``encoder``: the encode
    actors' own time split (``encoder_clock.encoder_split``)."""
    roles = {}
    for role in ROLES:
        span = (spans.get("roles") or {}).get(role)
        if not span:
            continue
        workers = max(1, int(span["workers"]))
        active = _span(span["first"], span["last"])
        row = {
            "busy_s": span["busy_s"],
            "workers": workers,
            "spans": span["spans"],
            "active_s": active,
            # cores the role kept busy on average over the window (read and write: tasks on any worker)
            "cores_busy": round(span["busy_s"] / window_s, 3) if window_s > 0 else None,
        }
        if role not in TASK_ROLES:  # an actor pool holds its workers the whole window
            held = workers * window_s
            row |= {
                "busy_share": round(span["busy_s"] / held, 3) if held > 0 else None,
                # of the time between its first start and last end: ~100% for the stage that paces the run
                "busy_share_active": round(span["busy_s"] / (workers * active), 3) if active else None,
                "idle_s": round(max(0.0, held - span["busy_s"]), 2),
            }
        roles[role] = row
    stages = {k: v for k, v in roles.items() if v.get("busy_share") is not None}
    work = sum(v["cores_busy"] or 0.0 for v in roles.values())
    return {
        "window_s": round(window_s, 2),
        "cpus": cpus,
        # the stage whose workers were busiest over the window: what paces the run
        "busiest": max(stages, key=lambda k: stages[k]["busy_share"]) if stages else None,
        # the stages' and tasks' own work over the CPUs (the driver and Ray's processes not counted)
        "work_utilization": round(work / cpus, 3) if cpus else None,
        "roles": roles,
        "encoder": dict(encoder) if encoder else None,
        "operators": operators,
        "progress_calls": int(spans.get("progress_calls", 0)),
    }


def describe(timeline: Mapping[str, Any]) -> str:
    """One line per role and per operator, for the log and the bench."""
    work = timeline.get("work_utilization")
    lines = [
        f"timeline over {timeline['window_s']:.1f} s of pipeline on {timeline['cpus']:g} CPUs"
        + ("" if work is None else f" (the stages' and tasks' own work: {work:.0%} of them)")
        + ":"
    ]
    for role, r in timeline["roles"].items():
        line = f"  {role}: {r['busy_s']:.1f} s busy in {r['spans']} spans on {r['workers']} worker(s)"
        if r.get("busy_share") is not None:
            active = "" if r.get("busy_share_active") is None else f" ({r['busy_share_active']:.0%} while active)"
            line += f": {r['busy_share']:.0%} of their time{active}, {r['idle_s']:.1f} s idle"
        elif r.get("cores_busy") is not None:
            line += f": {r['cores_busy']:.2f} cores on average"
        lines.append(line + (" <- busiest stage" if role == timeline.get("busiest") else ""))
    enc = timeline.get("encoder")
    if enc:
        lines.append(
            f"  encoder (its own clocks): device busy {enc['device_busy_share']:.0%} of the encoders' time "
            f"(compute {enc['compute_share']:.0%}), waiting for input {enc['wait_share']:.0%}; "
            f"h2d {enc['h2d_s']:.1f} s, compute {enc['compute_s']:.1f} s, d2h {enc['d2h_s']:.1f} s, host between "
            f"{enc['host_s']:.1f} s, waiting {enc['wait_s']:.1f} s over {enc['micro_batches']:,} micro-batches"
            + ("" if enc.get("padding_share") is None else f"; padding {enc['padding_share']:.0%} of token slots")
            + f"; attention {enc['attention']}"
        )
    for op in timeline["operators"]:
        waits = ", ".join(
            f"{key} {op[key]:.1f} s"
            for key in ("scheduling_wait_s", "submission_backpressure_s", "output_backpressure_s")
            if op.get(key)
        )
        lines.append(
            f"  [Ray Data] {op['operator']}: {op.get('tasks') or '?'} tasks, {op['task_s']:.1f} s in tasks over "
            f"{op['span_s'] or 0:.1f} s" + (f"; waited: {waits}" if waits else "")
        )
    lines.append(f"  progress actor: {timeline['progress_calls']:,} calls")
    return "\n".join(lines)


def _span(first: float | None, last: float | None) -> float | None:
    return round(last - first, 3) if first is not None and last is not None else None


def _number(value: Any) -> float | None:
    return round(float(value), 3) if isinstance(value, (int, float)) else None


# the run's steps before its first encoded batch, in order (``Phases`` names)
STARTUP_STEPS = ("model", "list_inputs", "lease", "prepare_output", "ray_start", "gpu_wait", "plan", "carry_over")


def process_started_at() -> float | None:
    """This process's start (wall clock) from ``/proc`` (Linux), None elsewhere: the interpreter's
    start and the imports are part of a run's start-up."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime, clock ticks since boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        import os

        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def startup(phases: Mapping[str, float]) -> dict[str, float] | None:
    """From launch to the first encoded batch, in named parts (seconds): the process's start and
    imports, the run's steps before the pipeline, then the pipeline's own start (read, tokenize,
    the encode actors' start and model load) until the first batch reached the encoder. None when
    no batch was encoded."""
    first = phases.get("first_encode_batch_at")
    embed = phases.get("embed_started_at")
    if first is None or embed is None:
        return None
    parts = {"launch_and_imports": phases.get("launched_before_s", 0.0)}
    parts |= {step: phases[step] for step in STARTUP_STEPS if phases.get(step)}
    parts["pipeline_to_first_encoded_batch"] = round(max(0.0, first - embed), 3)
    between = embed - sum(v for k, v in parts.items() if k in STARTUP_STEPS)
    parts["other_driver_steps"] = round(max(0.0, between), 3)  # the steps not timed on their own
    parts["total"] = round(parts["launch_and_imports"] + first, 3)
    return parts


def describe_startup(phases: Mapping[str, float]) -> str:
    parts = startup(phases)
    if parts is None:
        return "start-up: no batch was encoded"
    named = ", ".join(f"{k} {v:.1f}" for k, v in parts.items() if k != "total" and v >= 0.05)
    return f"start-up: {parts['total']:.1f} s from launch to the first encoded batch ({named})"


class Phases:
    """Seconds per named step of a run (``with phases("list_inputs"): ...``), for the run record."""

    _launch_counted = False  # the process's launch belongs to its first run only (a notebook, a test session)

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.t0 = time.monotonic()
        self.t0_wall = time.time()
        launched = None if Phases._launch_counted else process_started_at()
        if launched is not None:  # the interpreter's start: imports are start-up too
            self.values["launched_before_s"] = round(max(0.0, self.t0_wall - launched), 3)
        Phases._launch_counted = True

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.values[name] = round(self.values.get(name, 0.0) + time.monotonic() - start, 3)

    def at(self, name: str, wall_time: float | None) -> None:
        """A moment, as seconds since the run started (e.g. the first batch reaching the encoder)."""
        if wall_time is not None:
            self.values[name] = round(wall_time - self.t0_wall, 3)


def record(run: Any, telemetry: Any, ran: Any) -> None:
    """The run record's timeline (``ran``: the pipeline's stats), and its lines in the log; a
    timeline that cannot be made is said, and the run goes on (it is a report, not a result)."""
    from pipeline.stages.encoder_clock import encoder_split

    try:
        run.timeline = build(
            telemetry.timeline(),
            ran.operators,
            window_s=ran.ended - ran.started,
            cpus=ran.cpus,
            encoder=encoder_split(telemetry.snapshot() or {}),
        )
        logger.info("%s", describe(run.timeline))
    except Exception as e:
        logger.warning("no timeline for this run: %s: %s", type(e).__name__, e)


def record_firsts(phases: Phases, telemetry: Any) -> None:
    """When the first batch reached each stage (seconds after the run's start), and the start-up line."""
    first = telemetry.first_seen()
    for stage in (TOKENIZE, ENCODE):
        phases.at(f"first_{stage}_batch_at", first.get(stage))
    if first.get(ENCODE) is not None:
        logger.info("%s", describe_startup(phases.values))

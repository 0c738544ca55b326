"""The one adapter to Ray Data: a Ray session, and a dataset built from stage specs.

``apply_stage`` is the only ``map_batches`` call in the project: a ``StageSpec`` (stage class,
typed settings, resources, batch size — made by the plan) becomes an actor-pool stage.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pipeline.backend.datasource import ShardDatasource
from pipeline.backend.progress import Telemetry
from pipeline.backend.timed_stage import timed
from pipeline.backend.timeline import operator_stats
from pipeline.errors import UsageError
from pipeline.stages.spec import Needs, StageSpec

logger = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Ray's and Ray Data's wrappers: their message is a task header and a traceback, their cause the error
_WRAPPERS = ("RayTaskError", "UserCodeException", "SystemException")


def failure_cause(e: BaseException) -> BaseException:
    """The error a task or actor raised, behind Ray's wrappers."""
    seen: set[int] = set()
    while id(e) not in seen and any(w in type(e).__name__ for w in _WRAPPERS):
        seen.add(id(e))
        inner = getattr(e, "cause", None) or e.__cause__
        if not isinstance(inner, BaseException):
            break
        e = inner
    return e


def describe_failure(e: BaseException) -> str:
    """``Type: message (notes)`` of the error behind Ray's wrappers, on one line, without terminal
    colour codes."""
    cause = failure_cause(e)
    notes = [str(n) for n in getattr(cause, "__notes__", ()) or ()]  # e.g. which file a write was refused
    text = f"{type(cause).__name__}: {cause}" + "".join(f" ({n})" for n in notes)
    return " ".join(_ANSI.sub("", text).split())


# Ray settings for the cluster this job starts itself (a `ray start` cluster has its own; see
# docs/operations.md). Ray kills idle workers beyond a soft limit of one per CPU; on a small node the
# stage actors and Ray Data's own actors reach it alone, so every read and write task started a fresh
# worker process that imported Ray Data, pyarrow and this package again (docs/benchmarks.md, "The CPU
# side": 16 -> 11 worker processes and 11% less CPU for the whole job on 2 cores).
LOCAL_RAYLET_ENV = {"RAY_num_workers_soft_limit": str(2 * (os.cpu_count() or 1) + 8)}


@contextmanager
def _local_raylet_env(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment while Ray starts its processes (they inherit it);
    an operator's own value wins."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Use the Ray already initialised in this process, else connect/start one and stop it after."""
    import ray

    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
    local = address is None and not os.environ.get("RAY_ADDRESS")
    if local:
        # "local" starts a fresh cluster; a bare ray.init() would try a `ray start` cluster
        # recorded in /tmp/ray/ray_current_cluster, which may be long gone (then it hangs).
        address = "local"
        kwargs["include_dashboard"] = False
    try:
        with _local_raylet_env(LOCAL_RAYLET_ENV if local else {}):
            ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise UsageError(f"cannot connect to the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: {e}") from e
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def data_context(*, progress: bool) -> Iterator[None]:
    """Ray Data's process-wide context as one run wants it (progress bars, no automatic stats log),
    for the length of the run: the caller's own settings are back afterwards (a notebook, a worker)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    wanted = {
        "enable_progress_bars": progress,
        "enable_operator_progress_bars": progress,
        "enable_auto_log_stats": False,
    }
    before = {name: getattr(ctx, name) for name in wanted}
    for name, value in wanted.items():
        setattr(ctx, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(ctx, name, value)


def apply_stage(ds, spec: StageSpec, telemetry: Telemetry | None = None, stop: Callable[[], bool] | None = None):
    """``ds.map_batches`` for one stage: an actor pool, each actor holding one stage instance
    (wrapped to report each batch's rows and time to ``telemetry``).

    Ray Data's actor pools default to max_restarts=-1 / max_task_retries=-1: a dead actor is
    replaced and its batch retried.
    """
    from ray.data import ActorPoolStrategy

    res = spec.resources
    remote_args = {}
    env = gpu_process_env(spec.stage.needs) if res.num_gpus else {}
    if env:
        remote_args["runtime_env"] = {"env_vars": env}
    return ds.map_batches(
        timed(spec.stage, spec.role),
        fn_constructor_args=(spec.stage, telemetry, stop),
        fn_constructor_kwargs=spec.kwargs(),
        batch_size=spec.batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=res.min_actors, max_size=res.max_actors),
        num_cpus=res.num_cpus,
        num_gpus=res.num_gpus or None,
        **remote_args,
    )


def gpu_process_env(needs: Needs) -> dict[str, str]:
    """What a GPU actor's process is started with (``Needs.gpu_process_env``), less what the job's
    environment sets already (the user's choice stands)."""
    return {k: v for k, v in needs.gpu_process_env if k not in os.environ}


def build_dataset(
    source: ShardDatasource, stages: Sequence[StageSpec], *, read_num_cpus: float, telemetry: Telemetry | None = None
):
    """read (tasks) -> each stage (actor pools), lazily; nothing runs until it is written."""
    import ray

    ds = ray.data.read_datasource(source, num_cpus=read_num_cpus)
    for spec in stages:
        ds = apply_stage(ds, spec, telemetry, source.stop)  # a stopped run stops reading and working
    return ds


def run_pipeline(
    source: ShardDatasource,
    stages: Sequence[StageSpec],
    sink,
    *,
    io_num_cpus: float,
    telemetry: Telemetry | None = None,
    progress: bool = False,
) -> PipelineStats:
    """The Ray job of one run: read tasks -> each stage's actor pool -> write tasks into ``sink``,
    read and write tasks reserving ``io_num_cpus`` each. Returns, once everything is written, the
    window it ran in and Ray Data's per-operator stats (for the run's timeline)."""
    import ray

    dataset = build_dataset(source, stages, read_num_cpus=io_num_cpus, telemetry=telemetry)
    started = time.time()
    with data_context(progress=progress):
        dataset.write_datasink(sink, ray_remote_args={"num_cpus": io_num_cpus})
    return PipelineStats(
        started=started,
        ended=time.time(),
        cpus=float(ray.cluster_resources().get("CPU", 0.0)),
        operators=operator_stats(dataset),
    )


@dataclass(frozen=True)
class PipelineStats:
    started: float  # wall clock (time.time()), as the work spans are
    ended: float
    cpus: float  # the cluster's CPUs
    operators: list[dict[str, Any]]  # Ray Data's, in pipeline order (``timeline.operator_stats``)

"""The run's Ray work, arranged once from the job's settings (``BackendSession``): open Ray and wait
for the GPUs, plan the cluster, run the carry-over pass and the pipeline.

Made before the lease's work begins (cheap: nothing starts at construction); the runner then only
sequences it beside the ledger's transaction (``pipeline.ledger.run.OutputRun``), handing over the
work left and the metadata every file carries. Nothing here decides about the output's state: a
failed pipeline is raised as ``PipelineFailed`` with what it wrote, for the ledger to record.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict
from typing import Any, Protocol

from pipeline.backend import timeline
from pipeline.backend.capacity import GpuCapacity
from pipeline.backend.cluster import describe_cluster
from pipeline.backend.dataset import describe_failure, failure_cause, ray_session, run_pipeline
from pipeline.backend.datasink import EmbeddingDatasink
from pipeline.backend.datasource import ShardDatasource
from pipeline.backend.duplicates import duplicate_ids_on_cluster
from pipeline.backend.progress import Telemetry
from pipeline.backend.reuse import carry_over_pass
from pipeline.backend.status import BUDGET_CHECK_S, RunMonitor, count_records
from pipeline.backend.timeline import Phases
from pipeline.config import JobConfig, field_spec
from pipeline.errors import JobError, is_refused
from pipeline.io import coverage
from pipeline.io.counters import Counters
from pipeline.io.storage import Storage, scrub
from pipeline.ledger.identity import VECTOR_KEYS
from pipeline.ledger.lease import Lease, LeaseLost
from pipeline.ledger.manifest import RunRecord
from pipeline.ledger.output import Work
from pipeline.ledger.reuse import PoolFile
from pipeline.ledger.run import CountOnCluster
from pipeline.ledger.shard_log import ShardLog
from pipeline.ledger.stop import StopSignal, request_stop
from pipeline.planning import budget as budgets
from pipeline.planning.locations import check_shared_paths
from pipeline.planning.plan import PlanRequest, ResourcePlan, make_plan
from pipeline.planning.scheduler_config import load_scheduler_config
from pipeline.stages.model import ModelInfo, ModelSource
from pipeline.stages.packed import planned_attention

logger = logging.getLogger(__name__)


class PipelineFailed(JobError):
    """The pipeline failed; the runner records it and raises what it says: ``error`` (scrubbed, one
    text), what it ``written`` before (for the ledger's record), and whether the cause was a refusal
    (exit 2) rather than a failure (exit 1)."""

    def __init__(self, error: str, written: Counters, refused: bool):
        super().__init__(error)
        self.error, self.written, self.refused = error, written, refused


class Backend(Protocol):
    """What runs a run's passes, as the runner sequences them (``BackendSession`` is the Ray one).
    Made with ``(config, *, model, info, lease, phases)``; cheap: nothing starts before ``opened``."""

    stop_reason: str | None  # why the run stopped itself (its budget), once it did
    count_duplicates: CountOnCluster | None  # the duplicate-id count as a pass (None: the driver counts)

    def opened(self) -> AbstractContextManager[Any]: ...
    def plan(self) -> ResourcePlan: ...
    def describe(self, plan: ResourcePlan) -> dict[str, Any]: ...
    def carry_over(self, pool: Sequence[PoolFile], work: Work, metadata: Mapping[str, Any]) -> int: ...
    def embed(self, plan: ResourcePlan, work: Work, run: RunRecord, metadata: Mapping[str, Any]) -> Counters: ...


class BackendSession:
    """The Ray side of one run (see the module's doc). ``stop_reason``: why the run stopped itself
    (its budget), once it did."""

    count_duplicates: CountOnCluster | None = staticmethod(duplicate_ids_on_cluster)

    def __init__(self, config: JobConfig, *, model: ModelSource, info: ModelInfo, lease: Lease, phases: Phases):
        self.config, self.model, self.info, self.lease, self.phases = config, model, info, lease, phases
        self.stop_reason: str | None = None

    @contextlib.contextmanager
    def opened(self) -> Iterator[BackendSession]:
        """Ray started (or joined) and the GPUs the job waits for present; Ray stopped after, if started here."""
        config = self.config
        with contextlib.ExitStack() as session:
            with self.phases("ray_start"):
                session.enter_context(ray_session(config.ray_address))
            capacity = session.enter_context(GpuCapacity(min_gpus=config.gpus_to_wait_for, timeout_s=config.gpu_wait_s))
            with self.phases("gpu_wait"):
                capacity.wait()
            yield self

    def plan(self) -> ResourcePlan:
        """The cluster as it is now, planned: actors, batch sizes, compute dtype."""
        config = self.config
        with self.phases("plan"):
            cluster = describe_cluster(max_gpus=config.max_gpus)
            check_shared_paths(config, cluster)
            request = PlanRequest.from_job(config, rows_per_file=config.rows_per_file)
            plan = make_plan(cluster, self.info, request, load_scheduler_config(config.scheduler_config))
        logger.info("%s", plan.describe())
        return plan

    def describe(self, plan: ResourcePlan) -> dict[str, Any]:
        """The plan as the run record keeps it, with the attention asked for and the one expected
        (``auto`` resolves on each actor: its timeline says what ran)."""
        config = self.config
        expected = planned_attention(config.attention, plan.device, plan.dtype, config.shape_buckets)
        logger.info("attention: %s (%s expected on %s in %s)", config.attention, expected, plan.device, plan.dtype)
        return plan.to_dict() | {"attention": config.attention, "attention_planned": expected}

    def carry_over(self, pool: Sequence[PoolFile], work: Work, metadata: Mapping[str, Any]) -> int:
        """--update / --reuse-from: write the records of ``work`` whose text_hash matches a row of
        ``pool`` with that row's vector (a Ray pass); the rows written."""
        config = self.config
        try:
            written = carry_over_pass(
                pool=pool,
                records=self._records(work),
                # metrics only (no progress actor): e5_embed_records{outcome="reused"}
                sink=self._sink(work, metadata, Telemetry(run_id=self.lease.run_id), outcome="reused"),
                storage_options=config.storage_options,
                expected={k: metadata.get(k) for k in VECTOR_KEYS},
                layout=config.layout,
            )
        except Exception as e:
            self._raise_if_lease_lost(e)
            raise JobError(
                f"carrying vectors over failed: {scrub(describe_failure(e), config.storage_options)[:500]}"
            ) from e
        logger.info("the carry-over pass wrote %d row(s) from %d file(s)", written, len(pool))
        return written

    def embed(self, plan: ResourcePlan, work: Work, run: RunRecord, metadata: Mapping[str, Any]) -> Counters:
        """Run the pipeline over the shards left to read; the counters of what it wrote. A failed
        pipeline raises ``PipelineFailed`` with what it wrote (a lost lease: ``LeaseLost``)."""
        if not work.shards:
            return Counters()
        config, phases = self.config, self.phases
        phases.at("embed_started_at", time.time())
        stages = plan.stage_specs(self.model, config)
        telemetry = Telemetry.start(run.run_id)
        sink = self._sink(work, metadata, telemetry)
        budget = budgets.for_plan(
            config.budget, plan, rows_per_block=config.rows_per_block, reaction_s=BUDGET_CHECK_S + StopSignal.poll_s
        )
        status = RunMonitor(
            telemetry, total_bytes=sum(s.size for s in work.shards),
            count_records=functools.partial(count_records, config.storage_options, work.shards),
            records_done=coverage.count(work.skip),  # rows of the shards left that earlier runs wrote
            interval_s=config.telemetry.status_interval_s, budget=budget, on_over=self._stop_for_budget,
        )  # fmt: skip
        stop = StopSignal(config.output, config.storage_options) if budget is not None else None
        shard_log = ShardLog(config.output, config.storage_options, fence=sink.fence)
        failure: Exception | None = None
        try:
            with status:
                records = self._records(work, shard_log=shard_log, telemetry=telemetry, stop=stop)
                ran = run_pipeline(records, stages, sink, io_num_cpus=plan.io_num_cpus, telemetry=telemetry,
                                   progress=config.telemetry.progress)  # fmt: skip
            timeline.record(run, telemetry, ran)
        except Exception as e:
            self._raise_if_lease_lost(e)
            failure = e
        finally:
            if status.projection is not None and budget is not None:
                run.budget = {"cap": budget.max_hours, "unit": budget.what, **asdict(status.projection)}
            timeline.record_firsts(phases, telemetry)
            run.oom_splits = int((telemetry.snapshot() or {}).get("oom_splits", 0))
            if run.oom_splits:
                logger.warning("%d encode micro-batch(es) split after running out of device memory", run.oom_splits)
            telemetry.stop()
        if failure is not None:
            error = scrub(describe_failure(failure), config.storage_options)[:2000]
            raise PipelineFailed(error, sink.totals, is_refused(failure_cause(failure))) from failure
        return sink.totals

    # ------------------------------------------------------------------ the parts a pass is made of

    def _stop_for_budget(self, reason: str) -> None:
        """The status thread, past the cap: stop reading (every reader sees the stop signal)."""
        self.stop_reason = reason
        logger.warning("stopping to keep to the budget: %s", reason)
        request_stop(Storage(self.config.output, self.config.storage_options), self.lease.check, reason)

    def _raise_if_lease_lost(self, e: Exception) -> None:
        if isinstance(e, LeaseLost) or self.lease.lost:
            raise LeaseLost(self.lease.lost or str(e)) from e

    def _sink(
        self, work: Work, metadata: Mapping[str, Any], telemetry: Telemetry, outcome: str = "embedded"
    ) -> EmbeddingDatasink:
        """Where a pass over ``work.shards`` writes: data files behind the lease fence, each recording
        the versions of the shards it holds rows of."""
        config = self.config
        return EmbeddingDatasink(
            output_uri=config.output, storage_options=config.storage_options, metadata=dict(metadata),
            dim=self.info.hidden_size, output_dtype=config.output_dtype, rows_per_file=config.rows_per_file,
            versions={s.path: s.version_key for s in work.shards}, fence=self.lease.fence(), telemetry=telemetry,
            outcome=outcome, name_salt=work.manifest.name_salt,
        )  # fmt: skip

    def _records(self, work: Work, **telemetry: Any) -> ShardDatasource:
        """The records of ``work.shards`` not yet done, as the job reads them (the same ids, titles and
        text_hash in the carry-over pass and in the pipeline); ``telemetry``: shard_log, telemetry, stop."""
        config = self.config
        return ShardDatasource(
            shards=work.shards, storage_options=config.storage_options, rows_per_block=config.rows_per_block,
            skip=work.skip, max_record_bytes=config.max_record_bytes,
            fields=field_spec(config, prefix=config.prefix_text), **telemetry,
        )  # fmt: skip

"""The executor: ``run_job`` as a short sequence of named steps.

check locations -> lease the output -> begin the output's run (ledger: what is left) -> plan the
cluster -> carry vectors over -> read (tasks) -> tokenize (CPU actor pool) -> encode (GPU actor
pool) -> write (tasks) through the Ray backend -> tidy, prove complete, mark and publish (ledger).

The runner arranges the Ray work and hands its counters over; every decision about the output's
state is the ledger's (``pipeline.ledger.run.OutputRun``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import asdict, dataclass

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
from pipeline.errors import JobError, UsageError, is_refused
from pipeline.io import coverage
from pipeline.io.counters import Counters
from pipeline.io.listing import Listing, list_inputs, warn_unversioned
from pipeline.io.storage import Storage, scrub
from pipeline.ledger.duplicates import report_duplicate_ids
from pipeline.ledger.iceberg import IcebergPublisher
from pipeline.ledger.identity import VECTOR_KEYS
from pipeline.ledger.lease import Lease, LeaseLost
from pipeline.ledger.manifest import RunRecord
from pipeline.ledger.output import OutputState, Work
from pipeline.ledger.reuse import reuse_from_pool, update_pool
from pipeline.ledger.run import OutputRun, now
from pipeline.ledger.shard_log import ShardLog
from pipeline.ledger.stop import StopSignal, request_stop
from pipeline.ledger.summary import RunSummary
from pipeline.planning import budget as budgets
from pipeline.planning.locations import check_locations, check_shared_paths
from pipeline.planning.plan import PlanRequest, ResourcePlan, make_plan
from pipeline.planning.scheduler_config import load_scheduler_config
from pipeline.stages.model import ModelInfo, ModelSource
from pipeline.stages.packed import planned_attention

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class RunContext:
    """What the runner's steps read: the settings, the lease, the pinned model, the inputs as
    listed, the step timings, and the output's run (the ledger's half: ``OutputRun``)."""

    config: JobConfig
    lease: Lease
    output: OutputRun
    model: ModelSource
    info: ModelInfo
    listing: Listing
    phases: Phases
    started_at: str
    stop_reason: str | None = None  # the run asked itself to stop (its budget): why


def run_job(config: JobConfig) -> RunSummary:
    """Lease the output, see what is left, embed it, prove the output complete, record the run."""
    with config.secrets_registered():  # scrubbed from every message while the job runs
        return _run(config)


def _run(config: JobConfig) -> RunSummary:
    phases, started_at = Phases(), now()
    check_locations(config)
    with phases("model"):
        asked = ModelSource(name_or_path=config.model, revision=config.revision, storage_options=config.storage_options)
        model, model_sha = asked.pin_for_run(config.prefix, config.prefix_text)
        info: ModelInfo = model.info()
    with phases("list_inputs"):
        listing = _list_inputs(config)  # read-only: before the lease
    storage = Storage(config.output, config.storage_options)
    with phases("lease"):
        lease = Lease.take(storage, config.lease, replace_damaged=config.overwrite)
    if lease.waited:  # another run held the output meanwhile: list the inputs as they are now
        with phases("list_inputs"):
            listing = _list_inputs(config)
    output = OutputRun(
        OutputState(storage, fence=lease.check, retain=config.iceberg_table is not None),
        run_id=lease.run_id,
        metadata=config.output_settings().metadata(info, model_sha),
        publisher=IcebergPublisher.for_job(config, info),
        timer=phases,
        started=phases.t0,
    )
    ctx = RunContext(
        config=config, lease=lease, output=output, model=model, info=info, listing=listing, phases=phases,
        started_at=started_at,
    )  # fmt: skip
    try:
        return _run_leased(ctx)
    except KeyboardInterrupt as e:
        if lease.lost:
            raise JobError(f"stopped: {lease.lost}") from e
        raise
    except LeaseLost as e:
        raise JobError(f"stopped: {e}") from e
    finally:
        lease.release()


def _list_inputs(config: JobConfig) -> Listing:
    listing = list_inputs(
        config.inputs, config.storage_options, config.input_format, ignore_unknown=config.ignore_unknown_files
    )
    warn_unversioned(listing)
    return listing


def _run_leased(ctx: RunContext) -> RunSummary:
    """See what is left, plan, carry vectors over, embed, then the ledger tidies, proves, marks and publishes."""
    config, phases, output = ctx.config, ctx.phases, ctx.output
    work = output.begin(config.output_settings(), ctx.listing)
    if work.noop:
        message = f"{work.manifest.rows_written} rows; pass --overwrite to start over"
        return RunSummary(status="noop", output=config.output, message=message, published=output.publish_current())
    run = output.new_record(ctx.started_at, phases.values)
    if work.rows_skipped:
        logger.info(
            "resuming: %d input rows are already in %s; %d of %d shard(s) left to read",
            work.rows_skipped, config.output, len(work.shards), len(output.shards),
        )  # fmt: skip
    with contextlib.ExitStack() as session:
        with phases("ray_start"):
            session.enter_context(ray_session(config.ray_address))
        capacity = session.enter_context(GpuCapacity(min_gpus=config.gpus_to_wait_for, timeout_s=config.gpu_wait_s))
        with phases("gpu_wait"):
            capacity.wait()
        with phases("plan"):
            plan = _plan(config, ctx.info)
        logger.info("%s", plan.describe())
        run.plan = plan.to_dict()
        # what the encoders are expected to run (auto resolves on each actor: its timeline says what ran)
        expected = planned_attention(config.attention, plan.device, plan.dtype, config.shape_buckets)
        run.plan |= {"attention": config.attention, "attention_planned": expected}
        logger.info("attention: %s (%s expected on %s in %s)", config.attention, expected, plan.device, plan.dtype)
        # the compute dtype as resolved ("auto": bf16/fp16 on GPUs, float32 on CPU), before any write
        output.fix_compute(plan.dtype, plan.device)
        with phases("carry_over"):
            run.rows_reused, work = _carry_over(ctx, work)
        with phases("embed"):
            written = _embed(ctx, plan, work, run)
        totals = output.tidy(run)
        with phases("duplicate_ids"):  # inside the session: its cluster path needs Ray
            duplicates = report_duplicate_ids(
                output.state.storage, totals, duplicate_ids_on_cluster, layout=config.layout
            )
    proven = output.prove(
        run, written, totals, duplicates, allow_remainders=config.skip_corrupt_remainders,
        max_bad_fraction=config.max_bad_fraction, stopped=ctx.stop_reason is not None,
        storage_options=config.storage_options,
    )  # fmt: skip
    summary = RunSummary(status=run.status, output=config.output, run=run, duplicate_ids=duplicates.duplicate_ids)
    output.refuse_incomplete(proven, ctx.stop_reason, config.max_bad_fraction, summary.line())
    output.mark_complete(totals)
    summary.published = output.publish(totals.data_paths)
    return summary


def _carry_over(ctx: RunContext, work: Work) -> tuple[int, Work]:
    """--update / --reuse-from: write the records whose text_hash matches a pool row with that row's
    vector (a Ray pass); the ledger then says what it carried and what is left to encode."""
    config, lease, output = ctx.config, ctx.lease, ctx.output
    pool = update_pool(output.state, work) if config.update else []
    if config.reuse_from:
        pool += reuse_from_pool(config.reuse_from, config.output, config.storage_options, output.metadata, VECTOR_KEYS)
    if not pool or not work.shards:
        return 0, work
    try:
        written = carry_over_pass(
            pool=pool,
            records=_records(config, work),
            # metrics only (no progress actor): e5_embed_records{outcome="reused"}
            sink=_sink(ctx, work, Telemetry(run_id=lease.run_id), outcome="reused"),
            storage_options=config.storage_options,
            expected={k: output.metadata.get(k) for k in VECTOR_KEYS},
            layout=config.layout,
        )
    except Exception as e:
        if isinstance(e, LeaseLost) or lease.lost:
            raise LeaseLost(lease.lost or str(e)) from e
        raise JobError(
            f"carrying vectors over failed: {scrub(describe_failure(e), config.storage_options)[:500]}"
        ) from e
    reused, left = output.carried()
    logger.info(
        "carried %d vector(s) over by text_hash from %d file(s) (%d rows written); encoding only the records left",
        reused, len(pool), written,
    )  # fmt: skip
    return reused, left


def _sink(ctx: RunContext, work: Work, telemetry: Telemetry, outcome: str = "embedded") -> EmbeddingDatasink:
    """Where a pass over ``work.shards`` writes: data files behind the lease fence, each recording
    the versions of the shards it holds rows of."""
    config = ctx.config
    return EmbeddingDatasink(
        output_uri=config.output, storage_options=config.storage_options, metadata=dict(ctx.output.metadata),
        dim=ctx.info.hidden_size, output_dtype=config.output_dtype, rows_per_file=config.rows_per_file,
        versions={s.path: s.version_key for s in work.shards}, fence=ctx.lease.fence(), telemetry=telemetry,
        outcome=outcome, name_salt=work.manifest.name_salt,
    )  # fmt: skip


def _records(config: JobConfig, work: Work, **telemetry) -> ShardDatasource:
    """The records of ``work.shards`` not yet done, as the job reads them (the same ids, titles and
    text_hash in the carry-over pass and in the pipeline); ``telemetry``: shard_log, telemetry, stop."""
    return ShardDatasource(
        shards=work.shards, storage_options=config.storage_options, rows_per_block=config.rows_per_block,
        skip=work.skip, max_record_bytes=config.max_record_bytes, fields=field_spec(config, prefix=config.prefix_text),
        **telemetry,
    )  # fmt: skip


def _plan(config: JobConfig, info: ModelInfo) -> ResourcePlan:
    cluster = describe_cluster(max_gpus=config.max_gpus)
    check_shared_paths(config, cluster)
    request = PlanRequest.from_job(config, rows_per_file=config.rows_per_file)
    return make_plan(cluster, info, request, load_scheduler_config(config.scheduler_config))


def _embed(ctx: RunContext, plan: ResourcePlan, work: Work, run: RunRecord) -> Counters:
    """Run the pipeline over the shards left to read; the counters of what it wrote. A failed
    pipeline is recorded (the ledger's ``failed``) and raised: exit 2 for a refusal, else 1."""
    if not work.shards:
        return Counters()
    config, lease, phases = ctx.config, ctx.lease, ctx.phases
    phases.at("embed_started_at", time.time())
    telemetry = Telemetry.start(run.run_id)
    sink = _sink(ctx, work, telemetry)
    stages = plan.stage_specs(ctx.model, config)
    budget = budgets.for_plan(
        config.budget, plan, rows_per_block=config.rows_per_block, reaction_s=BUDGET_CHECK_S + StopSignal.poll_s
    )

    def stop_for_budget(reason: str) -> None:  # the status thread: past the cap, stop reading
        ctx.stop_reason = reason
        logger.warning("stopping to keep to the budget: %s", reason)
        request_stop(ctx.output.state.storage, lease.check, reason)

    status = RunMonitor(
        telemetry, total_bytes=sum(s.size for s in work.shards),
        count_records=functools.partial(count_records, config.storage_options, work.shards),
        records_done=coverage.count(work.skip),  # rows of the shards left that earlier runs wrote
        interval_s=config.telemetry.status_interval_s, budget=budget, on_over=stop_for_budget,
    )  # fmt: skip
    stop = StopSignal(config.output, config.storage_options) if budget is not None else None
    shard_log = ShardLog(config.output, config.storage_options, fence=sink.fence)
    failure: Exception | None = None
    try:
        with status:
            records = _records(config, work, shard_log=shard_log, telemetry=telemetry, stop=stop)
            ran = run_pipeline(records, stages, sink, io_num_cpus=plan.io_num_cpus, telemetry=telemetry,
                               progress=config.telemetry.progress)  # fmt: skip
        timeline.record(run, telemetry, ran)
    except Exception as e:
        if isinstance(e, LeaseLost) or lease.lost:
            raise LeaseLost(lease.lost or str(e)) from e
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
        first = f"pipeline failed: {error[:500]}"
        try:  # the record of the failed run; its own failure must not hide the pipeline's
            ctx.output.failed(run, sink.totals, error)
        except Exception as after:
            then = scrub(f"{type(after).__name__}: {after}", config.storage_options).splitlines()[0][:500]
            logger.error("recording the failed run failed too: %s", then)
            raise JobError(f"{first}; then recording the failed run failed too: {then}") from failure
        raise (UsageError if is_refused(failure_cause(failure)) else JobError)(first) from failure
    return sink.totals

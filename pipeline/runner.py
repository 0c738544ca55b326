"""The executor: ``run_job`` as a short sequence of named steps.

check locations -> lease the output -> see what is left (ledger) -> plan the cluster ->
run read (tasks) -> tokenize (CPU actor pool) -> encode (GPU actor pool) -> write (tasks)
through the Ray backend -> repair, prove complete and record the run (ledger) -> _SUCCESS.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.backend import timeline
from pipeline.backend.capacity import GpuCapacity
from pipeline.backend.cluster import describe_cluster
from pipeline.backend.dataset import PipelineStats, describe_failure, failure_cause, ray_session, run_pipeline
from pipeline.backend.datasink import EmbeddingDatasink
from pipeline.backend.datasource import ShardDatasource
from pipeline.backend.duplicates import duplicate_ids_on_cluster
from pipeline.backend.progress import Telemetry
from pipeline.backend.status import BUDGET_CHECK_S, StatusReporter
from pipeline.config import BudgetOptions, JobConfig, field_spec
from pipeline.errors import E5EmbedError, JobError, UsageError, is_refused, step_failed
from pipeline.io import coverage, schemas
from pipeline.io.counters import Counters
from pipeline.io.listing import Listing, Shard, list_inputs, unversioned
from pipeline.io.record_counts import parquet_rows
from pipeline.io.storage import Storage, escape_controls, has_pattern, is_within, scrub, strip_uri_credentials
from pipeline.ledger.duplicates import DuplicateReport, find_duplicate_ids
from pipeline.ledger.files import Totals
from pipeline.ledger.identity import VECTOR_KEYS
from pipeline.ledger.lease import Lease, LeaseLost, new_run_id
from pipeline.ledger.manifest import RunRecord, mark_success, remove_success
from pipeline.ledger.output import OutputState, Work
from pipeline.ledger.reuse import reuse_from_pool, update_pool
from pipeline.ledger.shard_log import ShardLog
from pipeline.ledger.stop import StopSignal, request_stop
from pipeline.ledger.table import EMBEDDED as EMBEDDED_CATALOG
from pipeline.ledger.table import Published, publish
from pipeline.planning.budget import Budget
from pipeline.planning.plan import ClusterSpec, PlanRequest, ResourcePlan, make_plan
from pipeline.planning.scheduler_config import load_scheduler_config
from pipeline.stages.encoder_clock import encoder_split
from pipeline.stages.model import ModelInfo, ModelSource
from pipeline.stages.packed import planned_attention

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class RunSummary:
    """What ``run_job`` returns: the outcome, and the run's own record for its counters (kept once,
    in ``RunRecord``; None for a no-op, whose counters are all 0)."""

    status: str  # complete | noop (a run that does not complete raises: JobError, UsageError)
    output: str
    run: RunRecord | None = None
    duplicate_ids: int = 0
    message: str = ""
    published: str = ""  # the Iceberg snapshot that now describes the output, if it is published

    def _count(self, name: str) -> Any:
        return getattr(self.run, name) if self.run is not None else 0

    rows_embedded = property(lambda self: self._count("rows_embedded"))
    rows_rejected = property(lambda self: self._count("rows_rejected"))
    rows_skipped = property(lambda self: self._count("rows_skipped"))
    rows_reused = property(lambda self: self._count("rows_reused"))  # vectors carried over (--update, --reuse-from)
    rows_removed = property(lambda self: self._count("rows_removed"))  # earlier rows not carried over
    tokens = property(lambda self: self._count("tokens"))
    wall_s = property(lambda self: self._count("wall_s"))
    docs_per_s = property(lambda self: self._count("docs_per_s"))
    tokens_per_s = property(lambda self: self._count("tokens_per_s"))

    def line(self) -> str:
        if self.status == "noop":
            line = f"e5-embed: {self.output} is already complete; nothing to do ({self.message})"
            return line + (f"; {self.published}" if self.published else "")
        return (
            f"e5-embed: {self.status}: {self.rows_embedded} rows embedded, {self.rows_rejected} rejected, "
            f"{self.rows_skipped} already done, "
            + (
                f"{self.rows_reused} reused, {self.rows_removed} removed, "
                if self.rows_reused or self.rows_removed
                else ""
            )
            + f"{self.tokens} tokens in {self.wall_s:.1f}s "
            f"({self.docs_per_s:.1f} docs/s, {self.tokens_per_s:.0f} tokens/s)"
            + (f", {self.duplicate_ids} duplicate ids" if self.duplicate_ids else "")
            + f" -> {self.output}"
            + (f"; {self.published}" if self.published else "")
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_locations(config: JobConfig) -> None:
    """Refuse an output inside an input (the next run would read it back) or the reverse."""
    for uri in config.inputs:
        folder = uri.rstrip("/")
        if has_pattern(folder.rsplit("/", 1)[-1]):
            folder = folder.rsplit("/", 1)[0]
        if is_within(config.output, folder):
            raise UsageError(
                f"--output {strip_uri_credentials(config.output)} lies inside --input "
                f"{strip_uri_credentials(uri)}: its files would be read back as input"
            )
        if is_within(folder, config.output):
            raise UsageError(
                f"--input {strip_uri_credentials(uri)} lies inside --output {strip_uri_credentials(config.output)}"
            )


def check_shared_paths(config: JobConfig, cluster: ClusterSpec) -> None:
    """Local paths on a multi-node cluster are only right when every node sees the same files."""
    if cluster.nodes <= 1 or config.shared_local_path:
        return
    local = [u for u in (config.output, *config.inputs) if Storage(u).is_local]
    if local:
        raise UsageError(
            f"the Ray cluster has {cluster.nodes} nodes but {local[0]} is a local path, which other "
            f"nodes cannot see; use object storage, or pass --shared-local-path if it is shared"
        )


def _model(config: JobConfig) -> tuple[ModelSource, str]:
    """The model pinned on the driver (Hub revision -> commit sha; local folder -> content digest),
    checked against what its folder declares (pooling, prompts)."""
    asked = ModelSource(name_or_path=config.model, revision=config.revision, storage_options=config.storage_options)
    asked.info()  # a clear exit 2 for a missing/unreadable model, before anything else
    model, model_sha = asked.pinned()
    model.check_declared(config.prefix, config.prefix_text)
    logger.info("model %s at %s", config.model, model_sha)
    return model, model_sha


def _acquire(config: JobConfig, storage: Storage) -> Lease:
    lease = Lease(storage, run_id=new_run_id(), ttl_s=config.lease.lease_ttl_s)
    try:
        lease.acquire(wait_s=config.lease.lease_wait_s, replace_damaged=config.overwrite)
    except E5EmbedError:  # held by a live run (exit 1), damaged (exit 2)
        raise
    except Exception as e:  # cannot create a small object there: the store's moment, or a config error
        raise step_failed(f"cannot write to output {storage.describe()}", e) from e
    return lease


class Phases:
    """Seconds per named step of a run (``with phases("list_inputs"): ...``), for the run record."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.t0 = time.monotonic()
        self.t0_wall = time.time()
        launched = timeline.process_started_at()  # the interpreter's start: imports are start-up too
        if launched is not None:
            self.values["launched_before_s"] = round(max(0.0, self.t0_wall - launched), 3)

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


@dataclass(kw_only=True)
class RunContext:
    """What every step of one leased run reads: the settings, the output behind the lease, the
    pinned model and the metadata its files carry, the inputs as listed, the step timings."""

    config: JobConfig
    lease: Lease
    state: OutputState  # the output (``state.storage``), fenced by the lease
    model: ModelSource
    info: ModelInfo
    metadata: dict[str, Any]
    listing: Listing
    phases: Phases
    started_at: str
    stop_reason: str | None = None  # the run asked itself to stop (its budget): why

    @property
    def shards(self) -> list[Shard]:
        return self.listing.shards


def run_job(config: JobConfig) -> RunSummary:
    """Lease the output, see what is left, embed it, prove the output complete, record the run."""
    with config.secrets_registered():  # scrubbed from every message while the job runs
        return _run(config)


def _run(config: JobConfig) -> RunSummary:
    phases = Phases()
    started_at = _now()
    check_locations(config)
    with phases("model"):
        model, model_sha = _model(config)
        info: ModelInfo = model.info()
    metadata = config.output_settings().metadata(info, model_sha)
    with phases("list_inputs"):
        listing = _list_inputs(config)  # read-only: before the lease
    storage = Storage(config.output, config.storage_options)
    with phases("lease"):
        lease = _acquire(config, storage)
    if lease.waited:  # another run held the output meanwhile: list the inputs as they are now
        with phases("list_inputs"):
            listing = _list_inputs(config)
    ctx = RunContext(
        config=config,
        lease=lease,
        state=OutputState(storage, fence=lease.check, retain=config.iceberg_table is not None),
        model=model,
        info=info,
        metadata=metadata,
        listing=listing,
        phases=phases,
        started_at=started_at,
    )
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
    blind = unversioned(listing.shards)
    if blind:  # change detection cannot rest on a version here: say so, never switch it off silently
        logger.warning(
            "%d input shard(s) come from a store that gives no ETag, generation or modification time "
            "(e.g. %s): a rewrite that keeps a shard's size cannot be detected between runs; the "
            "manifest records them as unversioned_shards",
            len(blind),
            strip_uri_credentials(blind[0].uri),
        )
    return listing


def _run_leased(ctx: RunContext) -> RunSummary:
    """The run's steps once the output is leased: see what is left, plan, carry vectors over, embed,
    tidy the output, prove it complete and record the run."""
    config, phases, state = ctx.config, ctx.phases, ctx.state
    with phases("prepare_output"):
        work = state.prepare(config.output_settings(), ctx.metadata, ctx.shards)
    work.manifest.note_listing(ctx.listing.ignored, ctx.listing.side_files, len(unversioned(ctx.shards)))
    if work.noop:
        published = _publish(ctx, work, state.files.data_files())
        return RunSummary(
            status="noop",
            output=config.output,
            message=f"{work.manifest.rows_written} rows; pass --overwrite to start over",
            published=_published_line(published),
        )
    run = RunRecord(
        run_id=ctx.lease.run_id,
        started_at=ctx.started_at,
        rows_skipped=work.rows_skipped,
        new_shards=work.new_shards,
        phases=phases.values,
    )
    if work.rows_skipped:
        logger.info(
            "resuming: %d input rows are already in %s; %d of %d shard(s) left to read",
            work.rows_skipped,
            config.output,
            len(work.shards),
            len(ctx.shards),
        )
    with contextlib.ExitStack() as session:
        with phases("ray_start"):
            session.enter_context(ray_session(config.ray_address))
        capacity = session.enter_context(GpuCapacity(min_gpus=config.gpus_to_wait_for, timeout_s=config.gpu_wait_s))
        with phases("gpu_wait"):
            capacity.wait()
        with phases("plan"):
            plan = _plan(config, ctx.info)
        run.plan = plan.to_dict()
        # what the encoders are expected to run (auto resolves on each actor: its timeline says what ran)
        run.plan["attention"] = config.attention
        run.plan["attention_planned"] = planned_attention(
            config.attention, plan.device, plan.dtype, config.shape_buckets
        )
        logger.info("attention: %s (%s expected on %s in %s)", config.attention, run.plan["attention_planned"],
                    plan.device, plan.dtype)  # fmt: skip
        # the compute dtype as resolved ("auto": bf16/fp16 on GPUs, float32 on CPU), before any write
        ctx.metadata.update(compute_dtype=plan.dtype, device=plan.device)
        state.check_compute(work, ctx.metadata)
        with phases("carry_over"):  # the work left: reads re-planned without the rows it carried over
            run.rows_reused, work = _carry_over(ctx, work)
        with phases("embed"):
            written = _embed(ctx, plan, work, run)
        touched = frozenset(src for _, sources in work.stale for src in sources)
        with phases("remove_stale"):
            stale_rows = state.remove_stale(work, ctx.metadata)
        with phases("reconcile"):
            totals = state.reconcile(ctx.metadata)
        if touched:  # --update: what its attempts carried over, a killed one's included (footers)
            run.rows_reused = max(run.rows_reused, totals.carried_rows(touched))
        run.rows_removed = max(0, stale_rows - run.rows_reused)
        with phases("duplicate_ids"):
            duplicates = _duplicate_ids(config, state.storage, totals)  # inside the session: its cluster path needs Ray
    return _prove_and_record(ctx, work, run, written, totals, duplicates)


def _carry_over(ctx: RunContext, work: Work) -> tuple[int, Work]:
    """--update / --reuse-from: write the records whose text_hash matches a pool row with that
    row's vector. Returns the rows carried, and the work left: the reads re-planned from the
    footers, so the pipeline encodes only the rest (``work`` itself is not changed)."""
    config, lease, state = ctx.config, ctx.lease, ctx.state
    pool = update_pool(state, work) if config.update else []
    if config.reuse_from:
        pool += reuse_from_pool(config.reuse_from, config.output, config.storage_options, ctx.metadata, VECTOR_KEYS)
    if not pool or not work.shards:
        return 0, work
    from pipeline.backend.reuse import PoolDatasource, carry_over

    chunked = config.chunk_tokens is not None
    # metrics only (no progress actor): e5_embed_records{outcome="reused"}
    sink = _sink(ctx, work, Telemetry(run_id=lease.run_id), outcome="reused")
    records = _records(config, work)
    vectors = PoolDatasource(
        files=pool,
        storage_options=config.storage_options,
        embedding_type=schemas.embedding_type(ctx.info.hidden_size, config.output_dtype),
        chunked=chunked,
        expected={k: ctx.metadata.get(k) for k in VECTOR_KEYS},
    )
    try:
        carried = carry_over(
            records=records,
            pool=vectors,
            pool_rows=sum(f.rows for f in pool),
            sink=sink,
            record_schema=schemas.chunk_embedded_schema(ctx.info.hidden_size, config.output_dtype) if chunked else None,
        )
    except Exception as e:
        if isinstance(e, LeaseLost) or lease.lost:
            raise LeaseLost(lease.lost or str(e)) from e
        raise JobError(
            f"carrying vectors over failed: {scrub(describe_failure(e), config.storage_options)[:500]}"
        ) from e
    left = dataclasses.replace(work)
    state.plan_reads(left, ctx.shards)
    reused = left.rows_skipped - work.rows_skipped  # from the footers: a row written twice counts once
    logger.info(
        "carried %d vector(s) over by text_hash from %d file(s) (%d rows written); encoding only the records left",
        reused,
        len(pool),
        carried,
    )
    return reused, left


def _sink(ctx: RunContext, work: Work, telemetry: Telemetry, outcome: str = "embedded") -> EmbeddingDatasink:
    """Where a pass over ``work.shards`` writes: data files behind the lease fence, each recording
    the versions of the shards it holds rows of."""
    config = ctx.config
    return EmbeddingDatasink(
        output_uri=config.output,
        storage_options=config.storage_options,
        metadata=ctx.metadata,
        dim=ctx.info.hidden_size,
        output_dtype=config.output_dtype,
        rows_per_file=config.rows_per_file,
        versions={s.path: s.version_key for s in work.shards},
        fence=ctx.lease.fence(),
        telemetry=telemetry,
        outcome=outcome,
        name_salt=work.manifest.name_salt,
    )


def _records(
    config: JobConfig,
    work: Work,
    shard_log: ShardLog | None = None,
    telemetry: Telemetry | None = None,
    stop: StopSignal | None = None,
) -> ShardDatasource:
    """The records of ``work.shards`` not yet done, as the job reads them (the same ids, titles and
    text_hash in the carry-over pass and in the pipeline)."""
    return ShardDatasource(
        shards=work.shards,
        storage_options=config.storage_options,
        rows_per_block=config.rows_per_block,
        skip=work.skip,
        max_record_bytes=config.max_record_bytes,
        fields=field_spec(config, prefix=config.prefix_text),
        shard_log=shard_log,
        telemetry=telemetry,
        stop=stop,
    )


def _budget(options: BudgetOptions, plan: ResourcePlan, rows_per_block: int) -> Budget | None:
    on_gpu = plan.device == "cuda"
    return Budget.of(
        max_gpu_hours=options.max_gpu_hours,
        max_cost=options.max_cost,
        gpu_hour_price=options.gpu_hour_price,
        encoders=plan.gpu_actors / plan.actors_per_gpu if on_gpu else plan.gpu_actors,
        margin=options.budget_margin,
        warmup_s=options.budget_warmup_s,
        on_gpu=on_gpu,
        # from passing the cap to the readers stopping: the next budget check, then the readers' next look
        reaction_s=BUDGET_CHECK_S + StopSignal.poll_s,
        # what is read by then is still encoded: about a block per read task and per encoder
        in_flight_records=rows_per_block * (2 + int(plan.gpu_actors)),
    )


def _plan(config: JobConfig, info: ModelInfo) -> ResourcePlan:
    cluster = describe_cluster(max_gpus=config.max_gpus)
    check_shared_paths(config, cluster)
    plan = make_plan(
        cluster,
        info,
        PlanRequest.from_job(config, rows_per_file=config.rows_per_file),
        load_scheduler_config(config.scheduler_config),
    )
    logger.info("%s", plan.describe())
    return plan


def _count_records(storage_options: dict[str, Any], shards: list[Shard], stop: threading.Event) -> int | None:
    """The shards' exact record total where the format stores it (all Parquet), for the status line."""
    try:
        return parquet_rows(storage_options, shards, stop=stop)
    except Exception as e:
        raise JobError(scrub(f"{type(e).__name__}: {e}", storage_options)[:500]) from e


def _embed(ctx: RunContext, plan: ResourcePlan, work: Work, run: RunRecord) -> Counters:
    """Run the pipeline over the shards left to read; the counters of what it wrote."""
    if not work.shards:
        return Counters()
    config, lease, phases = ctx.config, ctx.lease, ctx.phases
    phases.at("embed_started_at", time.time())
    telemetry = Telemetry.start(run.run_id)
    sink = _sink(ctx, work, telemetry)
    shard_log = ShardLog(config.output, config.storage_options, fence=sink.fence)
    stages = plan.stage_specs(
        model=ctx.model,
        prefix=config.prefix_text,
        output_dtype=config.output_dtype,
        rows_per_block=config.rows_per_block,
        compile_model=config.compile,
        attention=config.attention,
        shape_buckets=config.shape_buckets,
        device=config.device,
        chunk=config.chunking.settings(),
    )
    budget = _budget(config.budget, plan, config.rows_per_block)

    def stop_for_budget(reason: str) -> None:  # the status thread: past the cap, stop reading
        ctx.stop_reason = reason
        logger.warning("stopping to keep to the budget: %s", reason)
        request_stop(ctx.state.storage, lease.check, reason)

    status = StatusReporter(
        telemetry,
        total_bytes=sum(s.size for s in work.shards),
        count_records=functools.partial(_count_records, config.storage_options, work.shards),
        records_done=coverage.count(work.skip),  # rows of the shards left that earlier runs wrote
        interval_s=config.telemetry.status_interval_s,
        budget=budget,
        on_over=stop_for_budget,
    )
    stop = StopSignal(config.output, config.storage_options) if budget is not None else None
    failure: Exception | None = None
    try:
        with status:
            ran = run_pipeline(
                _records(config, work, shard_log=shard_log, telemetry=telemetry, stop=stop),
                stages,
                sink,
                io_num_cpus=plan.io_num_cpus,
                telemetry=telemetry,
                progress=config.telemetry.progress,
            )
        _timeline(run, telemetry, ran)
    except Exception as e:
        if isinstance(e, LeaseLost) or lease.lost:
            raise LeaseLost(lease.lost or str(e)) from e
        failure = e
    finally:
        if status.projection is not None and budget is not None:
            run.budget = {"cap": budget.max_hours, "unit": budget.what, **asdict(status.projection)}
        first = telemetry.first_seen()
        for stage in ("tokenize", "chunktokenize", "encode"):
            phases.at(f"first_{stage}_batch_at", first.get(stage))
        if first.get("encode") is not None:
            logger.info("%s", timeline.describe_startup(phases.values))
        run.oom_splits = int((telemetry.snapshot() or {}).get("oom_splits", 0))
        if run.oom_splits:
            logger.warning("%d encode micro-batch(es) split after running out of device memory", run.oom_splits)
        telemetry.stop()
    if failure is not None:
        run.status = "failed"
        run.error = scrub(describe_failure(failure), config.storage_options)[:2000]
        first = f"pipeline failed: {run.error[:500]}"
        try:  # the record of the failed run; its own failure must not hide the pipeline's
            # stale rows share (source, row) with the new ones: never "repair" those while any remain
            state = ctx.state
            totals = Totals.of(state.files.scan()) if work.stale else state.reconcile(dict(ctx.metadata))
            _record(ctx, run, work, sink.totals, totals)
        except Exception as after:
            then = scrub(f"{type(after).__name__}: {after}", config.storage_options).splitlines()[0][:500]
            logger.error("recording the failed run failed too: %s", then)
            raise JobError(f"{first}; then recording the failed run failed too: {then}") from failure
        raise (UsageError if is_refused(failure_cause(failure)) else JobError)(first) from failure
    return sink.totals


def _timeline(run: RunRecord, telemetry: Telemetry, ran: PipelineStats) -> None:
    """The run record's timeline, and its lines in the log; a timeline that cannot be made is said,
    and the run goes on (it is a report, not a result)."""
    try:
        run.timeline = timeline.build(
            telemetry.timeline(),
            ran.operators,
            window_s=ran.ended - ran.started,
            cpus=ran.cpus,
            encoder=encoder_split(telemetry.snapshot() or {}),
        )
        logger.info("%s", timeline.describe(run.timeline))
    except Exception as e:
        logger.warning("no timeline for this run: %s: %s", type(e).__name__, e)


def _duplicate_ids(config: JobConfig, storage: Storage, totals: Totals) -> DuplicateReport:
    duplicates = find_duplicate_ids(
        storage,
        totals.data_paths,
        totals.counters.rows_written,
        on_cluster=duplicate_ids_on_cluster,
        chunked=config.chunk_tokens is not None,
    )
    if duplicates.duplicate_ids:
        logger.warning(
            "%d id(s) occur more than once in %s (all rows kept), e.g. %s",
            duplicates.duplicate_ids,
            config.output,
            ", ".join(escape_controls(e) for e in duplicates.examples[:3]),
        )
    return duplicates


def _prove_and_record(
    ctx: RunContext, work: Work, run: RunRecord, written: Counters, totals: Totals, duplicates: DuplicateReport
) -> RunSummary:
    """Prove the output complete (or say why not), record the run, and publish ``_SUCCESS``."""
    config, state = ctx.config, ctx.state
    work.manifest.note_duplicates(duplicates.duplicate_ids, duplicates.examples)
    proof, bad_fraction = state.finish(
        manifest=work.manifest,
        shards=ctx.shards,
        totals=totals,
        allow_remainders=config.skip_corrupt_remainders,
        max_bad_fraction=config.max_bad_fraction,
    )
    run.status = "complete" if work.manifest.complete else ("stopped" if ctx.stop_reason else "failed")
    if not proof.ok:
        run.error = scrub(f"not complete: {proof.describe()}", config.storage_options)[:2000]
    _record(ctx, run, work, written, totals)
    summary = RunSummary(status=run.status, output=config.output, run=run, duplicate_ids=duplicates.duplicate_ids)
    if not proof.ok and ctx.stop_reason:
        raise JobError(
            f"stopped to keep to the budget ({ctx.stop_reason}); {config.output} holds whole files of what was "
            f"encoded, no _SUCCESS. Rerun with a higher cap (or none) to resume exactly where it stopped. "
            + summary.line()
        )
    if not proof.ok:
        raise JobError(f"{config.output} is not complete, so no _SUCCESS: {proof.describe()}. " + summary.line())
    if not work.manifest.complete:
        total = work.manifest.rows_written + work.manifest.rows_rejected
        raise JobError(
            f"{work.manifest.rows_rejected} of {total} records rejected ({bad_fraction:.4%}), more than "
            f"--max-bad-fraction {config.max_bad_fraction:g}; see {config.output}/_rejects/. " + summary.line()
        )
    if proof.skipped_remainders:
        logger.warning(
            "%d shard(s) broke off part-way and were accepted (--skip-corrupt-remainders): %s",
            len(proof.skipped_remainders),
            ", ".join(r.path for r in proof.skipped_remainders[:5]),
        )
    state.files.check_unchanged(totals, "while it was proven")
    mark_success(state.storage, ctx.lease.check)
    try:
        state.files.check_unchanged(totals, "as it was marked complete")
    except JobError:
        remove_success(state.storage, ctx.lease.check)
        raise
    summary.published = _published_line(_publish(ctx, work, totals.data_paths))
    return summary


def _publish(ctx: RunContext, work: Work, data_paths: Sequence[str]) -> Published | None:
    """A complete output published to its Iceberg table (one snapshot; nothing when it is already
    there); the manifest records the snapshot and the files retired meanwhile."""
    config, state, manifest = ctx.config, ctx.state, work.manifest
    settings = config.table_settings()
    if settings is None:
        if manifest.published:
            logger.warning(
                "%s is published to table %s (catalog %s), which this run did not update; pass --iceberg-table %s",
                config.output,
                manifest.published.get("table"),
                manifest.published.get("catalog"),
                manifest.published.get("table"),
            )
        return None
    catalog = settings.catalog or EMBEDDED_CATALOG
    was_table, was_catalog = manifest.published.get("table"), manifest.published.get("catalog")
    known = (was_table, was_catalog) == (settings.table, catalog)
    if manifest.published and not known:
        flags = [f"--iceberg-table {was_table}"] if was_table != settings.table else []
        if was_catalog != catalog:
            flags.append(
                "no --iceberg-catalog (its embedded catalog)"
                if was_catalog == EMBEDDED_CATALOG
                else f"--iceberg-catalog {was_catalog}"
            )
        raise UsageError(
            f"{config.output} is published to table {was_table} in catalog {was_catalog}, not table {settings.table} "
            f"in catalog {catalog}; one output publishes to one table (its retired files are kept for that table's "
            f"snapshots): rerun with {' and '.join(flags)}, or embed into another --output"
        )
    metadata = dict(ctx.metadata)
    for key in ("compute_dtype", "device"):  # a no-op run has no plan: the output's recorded values
        metadata.setdefault(key, manifest.metadata.get(key))
    dim, chunked = ctx.info.hidden_size, config.chunk_tokens is not None
    expected = (
        schemas.chunk_output_schema(dim, config.output_dtype)
        if chunked
        else schemas.output_schema(dim, config.output_dtype)
    )
    with ctx.phases("publish"):
        published = publish(
            settings,
            state.storage,
            metadata,
            expected,
            data_paths,
            {**manifest.snapshot_summary(ctx.lease.run_id), "model-sha": metadata.get("model_sha")},
            retired=sorted(state.files.retired),
            known=known,
            fence=ctx.lease.check,
        )
    state.published(manifest, published.record(), published.deleted_files)
    return published


def _published_line(published: Published | None) -> str:
    if published is None:
        return ""
    what = (
        f"snapshot {published.snapshot_id}" if published.committed else f"already at snapshot {published.snapshot_id}"
    )
    return f"table {published.table} ({published.catalog}): {what}, {published.files} file(s)"


def _record(ctx: RunContext, run: RunRecord, work: Work, written: Counters, totals: Totals) -> None:
    """The one place a run is recorded, failed or not: its counters, the output's totals, the manifest."""
    run.ended_at = _now()
    run.wall_s = round(time.monotonic() - ctx.phases.t0, 3)
    run.set_counters(written)
    ctx.state.record_run(work.manifest, run, totals.counters, totals.repaired_files)

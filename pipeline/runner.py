"""The executor: ``run_job`` as a short sequence of named steps.

check locations -> pin the model -> list the inputs -> lease the output -> begin the output's run
(ledger: what is left) -> open Ray -> plan the cluster -> carry vectors over -> read (tasks) ->
tokenize (CPU actor pool) -> encode (GPU actor pool) -> write (tasks) -> tidy, prove complete, mark
and publish (ledger).

Two objects are made from the settings before the leased part begins: the ledger's transaction on
the output (``pipeline.ledger.run.OutputRun``: every decision about the output's state) and the
run's Ray work (``pipeline.backend.session.BackendSession``). The leased part only sequences them,
handing the work left and the counters from one to the other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from pipeline.backend.session import Backend, BackendSession, PipelineFailed
from pipeline.backend.timeline import Phases
from pipeline.config import JobConfig
from pipeline.errors import JobError, UsageError
from pipeline.io.listing import Listing, list_inputs, warn_unversioned
from pipeline.io.storage import Storage, scrub
from pipeline.ledger.iceberg import IcebergPublisher
from pipeline.ledger.lease import Lease, LeaseLost
from pipeline.ledger.manifest import RunRecord
from pipeline.ledger.output import OutputState
from pipeline.ledger.run import OutputRun, now
from pipeline.ledger.summary import RunSummary
from pipeline.planning.locations import check_locations
from pipeline.stages.model import ModelInfo, ModelSource

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """What the leased part sequences: the ledger's transaction on the output, the run's Ray work,
    and the step timings."""

    output: OutputRun
    backend: Backend
    phases: Phases


def run_job(config: JobConfig, *, backend: Callable[..., Backend] = BackendSession) -> RunSummary:
    """Lease the output, see what is left, embed it, prove the output complete, record the run.
    ``backend``: what runs the passes (made like ``BackendSession``, the Ray one; see ``Backend``)."""
    with config.secrets_registered():  # scrubbed from every message while the job runs
        return _run(config, backend)


def _run(config: JobConfig, make_backend: Callable[..., Backend]) -> RunSummary:
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
    settings = config.output_settings()
    output = OutputRun(
        OutputState(storage, fence=lease.check, retain=config.iceberg_table is not None),
        settings=settings,
        listing=listing,
        run_id=lease.run_id,
        metadata=settings.metadata(info, model_sha),
        publisher=IcebergPublisher.for_job(config, info),
        timer=phases,
        started=phases.t0,
        started_at=started_at,
    )
    backend = make_backend(config, model=model, info=info, lease=lease, phases=phases)
    try:
        return _run_leased(RunContext(output=output, backend=backend, phases=phases))
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
    output, backend, phases = ctx.output, ctx.backend, ctx.phases
    work = output.begin()
    if work.noop:
        return output.noop()
    run = output.new_record(phases.values)
    with backend.opened():
        plan = backend.plan()
        run.plan = backend.describe(plan)
        output.fix_compute(plan.dtype, plan.device)  # the compute dtype as resolved, before any write
        with phases("carry_over"):  # --update / --reuse-from: vectors carried over by text_hash
            pool = output.carry_pool()
            if pool:
                backend.carry_over(pool, work, output.metadata)
                run.rows_reused, work = output.carried()
        with phases("embed"):
            try:
                written = backend.embed(plan, work, run, output.metadata)
            except PipelineFailed as failed:
                _record_failure(output, run, failed)
        totals = output.tidy(run)
        with phases("duplicate_ids"):  # inside the session: its cluster path needs Ray
            duplicates = output.duplicates(totals, backend.count_duplicates)
    return output.finish(run, written, totals, duplicates, stop_reason=backend.stop_reason)


def _record_failure(output: OutputRun, run: RunRecord, failed: PipelineFailed) -> NoReturn:
    """The pipeline failed: the ledger records the run, then exit 2 for a refusal, else 1. A failure
    to record it is said too, and never hides the pipeline's own."""
    first = f"pipeline failed: {failed.error[:500]}"
    try:
        output.failed(run, failed.written, failed.error)
    except Exception as after:
        then = scrub(f"{type(after).__name__}: {after}", output.state.storage.storage_options).splitlines()[0][:500]
        logger.error("recording the failed run failed too: %s", then)
        raise JobError(f"{first}; then recording the failed run failed too: {then}") from failed.__cause__
    raise (UsageError if failed.refused else JobError)(first) from failed.__cause__

"""The executor: checks everything cheap first, then builds and runs the Ray Data pipeline.

read (tasks) -> tokenize (CPU actor pool) -> encode (GPU actor pool) -> write (tasks)
"""

from __future__ import annotations

import _thread
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

from pipeline import coverage
from pipeline.capacity import GpuCapacity
from pipeline.config import JobConfig
from pipeline.duplicates import find_duplicate_ids
from pipeline.errors import JobError, UsageError
from pipeline.lease import Lease, LeaseHeld, LeaseLost, new_run_id
from pipeline.manifest import RunRecord, mark_success
from pipeline.model import ModelInfo, ModelSource
from pipeline.output import OutputState, Totals, Work, output_metadata
from pipeline.plan import ClusterSpec, PlanRequest, ResourcePlan, make_plan
from pipeline.scheduler_config import load_scheduler_config
from pipeline.shard_log import ShardLog
from pipeline.sink import EmbeddingDatasink
from pipeline.sources import FieldSpec, Shard, ShardDatasource, list_shards
from pipeline.storage import Storage, has_pattern, is_within, scrub, strip_uri_credentials

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class RunSummary:
    status: str  # complete | noop | failed
    output: str
    rows_embedded: int = 0
    rows_rejected: int = 0
    rows_skipped: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    duplicate_ids: int = 0
    message: str = ""

    @property
    def docs_per_s(self) -> float:
        return self.rows_embedded / self.wall_s if self.wall_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def line(self) -> str:
        if self.status == "noop":
            return f"e5-embed: {self.output} is already complete; nothing to do ({self.message})"
        return (f"e5-embed: {self.status}: {self.rows_embedded} rows embedded, {self.rows_rejected} rejected, "
                f"{self.rows_skipped} already done, {self.tokens} tokens in {self.wall_s:.1f}s "
                f"({self.docs_per_s:.1f} docs/s, {self.tokens_per_s:.0f} tokens/s)"
                + (f", {self.duplicate_ids} duplicate ids" if self.duplicate_ids else "") + f" -> {self.output}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Use the Ray already initialised in this process, else connect/start one and stop it after."""
    import ray

    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # "local" starts a fresh cluster; a bare ray.init() would try a `ray start` cluster
        # recorded in /tmp/ray/ray_current_cluster, which may be long gone (then it hangs).
        address = "local"
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise UsageError(f"cannot connect to the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: {e}") from e
    try:
        yield
    finally:
        ray.shutdown()


def build_dataset(config: JobConfig, plan: ResourcePlan, model: ModelSource, shards: list[Shard],
                  skip: coverage.Ranges):
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from pipeline.encode_stage import EncodeStage
    from pipeline.tokenize_stage import TokenizeStage

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = config.progress
    ctx.enable_operator_progress_bars = config.progress
    ctx.enable_auto_log_stats = False

    source = ShardDatasource(
        shards=shards, storage_options=config.storage_options, rows_per_block=config.rows_per_block, skip=skip,
        fields=FieldSpec(text_field=config.text_field, id_field=config.id_field, title_field=config.title_field),
        max_record_bytes=config.max_record_bytes, shard_log=ShardLog(config.output, config.storage_options),
    )
    tok = plan.tokenize_resources()
    enc = plan.encode_resources()
    ds = ray.data.read_datasource(source, num_cpus=plan.io_num_cpus)
    ds = ds.map_batches(
        TokenizeStage,
        fn_constructor_kwargs={"model": model, "prefix": config.prefix_text, "max_length": config.max_length},
        batch_size=min(config.rows_per_block, 1024),
        batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=tok.min_actors, max_size=tok.max_actors),
        num_cpus=tok.num_cpus,
    )
    ds = ds.map_batches(
        EncodeStage,
        fn_constructor_kwargs={"model": model, "batch_size": plan.batch_size, "dtype": config.dtype,
                               "device": config.device, "output_dtype": config.output_dtype,
                               "torch_threads": enc.torch_threads, "expect_gpu": plan.device == "cuda",
                               "compile_model": config.compile},
        batch_size=plan.rows_per_encode_call,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=enc.min_actors, max_size=enc.max_actors),
        num_gpus=enc.num_gpus,
        num_cpus=enc.num_cpus,
        # Ray Data's actor pools default to max_restarts=-1 / max_task_retries=-1:
        # a dead encode actor is replaced and its batch retried.
    )
    return ds


def check_locations(config: JobConfig) -> None:
    """Refuse an output inside an input (the next run would read it back) or the reverse."""
    for uri in config.inputs:
        folder = uri.rstrip("/")
        if has_pattern(folder.rsplit("/", 1)[-1]):
            folder = folder.rsplit("/", 1)[0]
        if is_within(config.output, folder):
            raise UsageError(f"--output {strip_uri_credentials(config.output)} lies inside --input "
                             f"{strip_uri_credentials(uri)}: its files would be read back as input")
        if is_within(folder, config.output):
            raise UsageError(f"--input {strip_uri_credentials(uri)} lies inside --output "
                             f"{strip_uri_credentials(config.output)}")


def check_shared_paths(config: JobConfig, cluster: ClusterSpec) -> None:
    """Local paths on a multi-node cluster are only right when every node sees the same files."""
    if cluster.nodes <= 1 or config.shared_local_path:
        return
    local = [u for u in (config.output, *config.inputs) if Storage(u).is_local]
    if local:
        raise UsageError(f"the Ray cluster has {cluster.nodes} nodes but {local[0]} is a local path, which other "
                         f"nodes cannot see; use object storage, or pass --shared-local-path if it is shared")


def _acquire(config: JobConfig, storage: Storage) -> Lease:
    lease = Lease(storage, run_id=new_run_id(), ttl_s=config.lease_ttl_s, on_lost=_thread.interrupt_main)
    try:
        lease.acquire(wait_s=config.lease_wait_s)
    except LeaseHeld as e:
        raise JobError(str(e)) from e
    except Exception as e:  # cannot even create a small object there: a config error
        raise UsageError(f"cannot write to output {storage.describe()}: {type(e).__name__}: {e}") from e
    return lease


def run_job(config: JobConfig) -> RunSummary:
    """Lease the output, see what is left, embed it, prove the output complete, record the run."""
    t0 = time.monotonic()
    started_at = _now()
    check_locations(config)
    model = ModelSource(name_or_path=config.model, revision=config.revision)
    info: ModelInfo = model.info()
    metadata = output_metadata(config, info)
    storage = Storage(config.output, config.storage_options)
    lease = _acquire(config, storage)
    try:
        return _run_leased(config, lease, storage, model, info, metadata, t0, started_at)
    except KeyboardInterrupt as e:
        if lease.lost:
            raise JobError(f"stopped: {lease.lost}") from e
        raise
    except LeaseLost as e:
        raise JobError(f"stopped: {e}") from e
    finally:
        lease.release()


def _run_leased(config: JobConfig, lease: Lease, storage: Storage, model: ModelSource, info: ModelInfo,
                metadata: dict[str, Any], t0: float, started_at: str) -> RunSummary:
    state = OutputState(storage, fence=lease.check)
    shards = list_shards(config.inputs, config.storage_options, config.input_format)
    work = state.prepare(config, metadata, shards)
    if work.noop:
        return RunSummary(status="noop", output=config.output,
                          message=f"{work.manifest.rows_written} rows; pass --overwrite to start over")
    run = RunRecord(run_id=lease.run_id, started_at=started_at, ended_at="", wall_s=0.0, status="running",
                    rows_embedded=0, rows_rejected=0, rows_skipped=work.rows_skipped, tokens=0, truncated=0,
                    docs_per_s=0.0, tokens_per_s=0.0, data_files=0, new_shards=work.new_shards)
    if work.rows_skipped:
        logger.info("resuming: %d input rows are already in %s; %d of %d shard(s) left to read", work.rows_skipped,
                    config.output, len(work.shards), len(shards))

    with ray_session(config.ray_address), GpuCapacity(min_gpus=config.gpus_to_wait_for,
                                                      timeout_s=config.gpu_wait_s) as capacity:
        capacity.wait()
        cluster = ClusterSpec.from_ray(max_gpus=config.max_gpus)
        check_shared_paths(config, cluster)
        plan = make_plan(cluster, info, PlanRequest.from_job(config), load_scheduler_config(config.scheduler_config))
        run.plan = plan.to_dict()
        logger.info("%s", plan.describe())
        sink = EmbeddingDatasink(output_uri=config.output, storage_options=config.storage_options,
                                 metadata=metadata, dim=info.hidden_size, output_dtype=config.output_dtype,
                                 rows_per_file=config.rows_per_file, fence=lease.fence())
        try:
            if work.shards:
                ds = build_dataset(config, plan, model, work.shards, work.skip)
                ds.write_datasink(sink, ray_remote_args={"num_cpus": plan.io_num_cpus})
        except Exception as e:
            if isinstance(e, LeaseLost) or lease.lost:
                raise LeaseLost(lease.lost or str(e)) from e
            run.status, run.error = "failed", scrub(f"{type(e).__name__}: {e}", config.storage_options)[:2000]
            _record(run, state, work, t0, sink.totals, state.reconcile(metadata))
            raise JobError(f"pipeline failed: {run.error.splitlines()[0]}") from e
        totals = state.reconcile(metadata)
        duplicates = find_duplicate_ids(storage, totals.data_paths, totals.rows_written)

    if duplicates.duplicate_ids:
        logger.warning("%d id(s) occur more than once in %s (all rows kept), e.g. %s", duplicates.duplicate_ids,
                       config.output, ", ".join(duplicates.examples[:3]))
    work.manifest.duplicate_ids = duplicates.duplicate_ids
    work.manifest.duplicate_id_examples = duplicates.examples
    proof, bad_fraction = state.finish(manifest=work.manifest, shards=shards, totals=totals,
                                       allow_remainders=config.skip_corrupt_remainders,
                                       max_bad_fraction=config.max_bad_fraction)
    run.status = "complete" if work.manifest.complete else "failed"
    if not proof.ok:
        run.error = scrub(f"not complete: {proof.describe()}", config.storage_options)[:2000]
    _record(run, state, work, t0, sink.totals, totals)
    summary = RunSummary(status=run.status, output=config.output, rows_embedded=run.rows_embedded,
                         rows_rejected=run.rows_rejected, rows_skipped=work.rows_skipped, tokens=run.tokens,
                         wall_s=run.wall_s, duplicate_ids=duplicates.duplicate_ids)
    if not proof.ok:
        raise JobError(f"{config.output} is not complete, so no _SUCCESS: {proof.describe()}. " + summary.line())
    if not work.manifest.complete:
        total = work.manifest.rows_written + work.manifest.rows_rejected
        raise JobError(f"{work.manifest.rows_rejected} of {total} records rejected ({bad_fraction:.4%}), more than "
                       f"--max-bad-fraction {config.max_bad_fraction:g}; see {config.output}/_rejects/. "
                       + summary.line())
    if proof.skipped_remainders:
        logger.warning("%d shard(s) broke off part-way and were accepted (--skip-corrupt-remainders): %s",
                       len(proof.skipped_remainders), ", ".join(r.path for r in proof.skipped_remainders[:5]))
    mark_success(storage, lease.check)
    return summary


def _record(run: RunRecord, state: OutputState, work: Work, t0: float, written: dict[str, Any], totals: Totals) -> None:
    """The one place a run is recorded, failed or not: its counters, the output's totals, the manifest."""
    run.ended_at = _now()
    run.wall_s = round(time.monotonic() - t0, 3)
    run.rows_embedded = int(written.get("rows_written", 0))
    run.rows_rejected = int(written.get("rows_rejected", 0))
    run.tokens = int(written.get("tokens", 0))
    run.truncated = int(written.get("truncated", 0))
    run.data_files = int(written.get("data_files", 0))
    run.reject_kinds = dict(written.get("reject_kinds", {}))
    run.docs_per_s = round(run.rows_embedded / run.wall_s, 2) if run.wall_s else 0.0
    run.tokens_per_s = round(run.tokens / run.wall_s, 1) if run.wall_s else 0.0
    work.manifest.set_totals(totals)
    work.manifest.repaired_files += totals.repaired_files
    work.manifest.add_run(run)
    work.manifest.save(state.storage, state.fence)

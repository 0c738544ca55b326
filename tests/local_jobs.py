"""What the whole-run tests share: a job's settings over a local corpus and output, a corpus of
JSONL shards with known ids, the ids an output holds; ``InProcessBackend``, the runner's passes
without Ray (``run_job(config, backend=InProcessBackend)``: the publisher's and the ledger's
operator stories as unit tests); and ``Job``, one output's runs step by step, the same way."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads

from pipeline.backend.session import BackendSession
from pipeline.config import JobConfig, field_spec
from pipeline.io.counters import Counters
from pipeline.io.listing import list_inputs
from pipeline.io.sink import write_rows
from pipeline.io.sources import read_shards
from pipeline.io.storage import Storage
from pipeline.ledger.duplicates import DuplicateReport
from pipeline.ledger.iceberg import IcebergPublisher
from pipeline.ledger.manifest import RunRecord
from pipeline.ledger.output import OutputState, Work
from pipeline.ledger.reuse import PoolFile
from pipeline.ledger.run import OutputRun
from pipeline.ledger.shard_log import ShardLog
from pipeline.planning.plan import ClusterSpec, PlanRequest, ResourcePlan, make_plan
from pipeline.planning.scheduler_config import load_scheduler_config
from pipeline.stages.encode import EncodeStage
from pipeline.stages.model import ModelSource, offline_info
from pipeline.stages.tokenize import TokenizeStage


class InProcessBackend(BackendSession):
    """The runner's passes in this process, without Ray: the plan's own stages (made from its stage
    specs) over the product's read tasks, written through its datasink behind the lease fence, one
    block at a time. No carry-over pass (``--update`` and ``--reuse-from`` encode every row again:
    the same vectors), no budget, no status line, and the duplicate ids counted on the driver.
    For the stories that test the ledger and the publisher; the Ray path has its own tests."""

    count_duplicates = None

    @contextlib.contextmanager
    def opened(self) -> Iterator[InProcessBackend]:
        yield self

    def plan(self) -> ResourcePlan:
        config = self.config
        request = PlanRequest.from_job(config, rows_per_file=config.rows_per_file)
        cluster = ClusterSpec(gpus=0, cpus=2, nodes=1)
        return make_plan(cluster, self.info, request, load_scheduler_config(config.scheduler_config))

    def carry_over(self, pool: Sequence[PoolFile], work: Work, metadata: Mapping[str, Any]) -> int:
        return 0

    def embed(self, plan: ResourcePlan, work: Work, run: RunRecord, metadata: Mapping[str, Any]) -> Counters:
        if not work.shards:
            return Counters()
        sink = self._sink(work, metadata, telemetry=None)
        stages = [spec.stage(**spec.settings) for spec in plan.stage_specs(self.model, self.config)]
        shard_log = ShardLog(self.config.output, self.config.storage_options, fence=sink.fence)
        written = []
        for task in self._records(work, shard_log=shard_log).get_read_tasks(1):
            for block in task():
                for stage in stages:
                    block = stage(block)
                written.append(sink.write([block], None))
        return Counters.total(Counters.from_dict(w) for w in written)


def job_config(corpus: Path, out: Path, model: str, **kw) -> JobConfig:
    """A run over ``corpus`` into ``out`` with ``model``, no progress bars; ``kw``: any other setting."""
    return JobConfig(inputs=(str(corpus),), output=str(out), model=model, progress=False, **kw)


def write_corpus(folder: Path, shards: int = 4, per_shard: int = 60) -> set[str]:
    """``shards`` JSONL shards of ``per_shard`` records of varied length; their ids."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = set()
    for s in range(shards):
        with open(folder / f"shard-{s}.jsonl", "w") as f:
            for i in range(per_shard):
                f.write(json.dumps({"id": f"d{s}-{i}", "text": f"passage {s} {i} " + "words " * (i % 40)}) + "\n")
                ids.add(f"d{s}-{i}")
    return ids


def output_ids(out: Path) -> list[str]:
    """Every id the output's data files hold (rejects are under ``_rejects/``, not read here)."""
    return pads.dataset(str(out), format="parquet").to_table(columns=["id"])["id"].to_pylist()


def write_shard(path: Path, records: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in records))


class Job:
    """One output's runs, the Ray pipeline replaced by the same stages called in this process."""

    def __init__(self, tmp_path: Path, model: str, **kw):
        self.corpus, self.out = tmp_path / "corpus", tmp_path / "out"
        self.config = JobConfig(inputs=(str(self.corpus),), output=str(self.out), model=model, rows_per_file=4, **kw)
        self.info = offline_info(model)
        self.model = ModelSource(name_or_path=model)

    def begin(self) -> tuple[OutputRun, object]:
        pinned, sha = self.model.pinned()
        self.pinned = pinned
        listing = list_inputs(self.config.inputs, {})
        settings = self.config.output_settings()
        output = OutputRun(
            OutputState(Storage(str(self.out)), retain=self.config.iceberg_table is not None),
            settings=settings,
            listing=listing,
            run_id=f"run-{len(list(self.out.glob('_lease*')))}",
            metadata=settings.metadata(self.info, sha),
            publisher=IcebergPublisher.for_job(self.config, self.info),
        )
        return output, output.begin()

    def embed(self, output: OutputRun, work, *, fail_after: int | None = None) -> Counters:
        """What the pipeline does for ``work``: read, tokenize, encode, write (files and shard records)."""
        tokenize = TokenizeStage(model=self.pinned, prefix="passage: ", max_length=512)
        encode = EncodeStage(model=self.pinned, batch_size=8, device="cpu", dtype="float32")
        written = Counters()
        log = ShardLog(str(self.out), {})
        blocks = read_shards({}, work.shards, field_spec(self.config, prefix="passage: "), 4, work.skip,
                             on_shard_end=log)  # fmt: skip
        for i, block in enumerate(blocks):
            if fail_after is not None and i >= fail_after:
                raise RuntimeError("the pipeline failed (injected)")
            embedded = encode(tokenize(block))
            written = Counters.total([written, write_rows(
                Storage(str(self.out)), embedded, metadata=dict(output.metadata), dim=self.info.hidden_size,
                output_dtype="float32", rows_per_file=4, versions={s.path: s.version_key for s in work.shards},
                name_salt=work.manifest.name_salt,
            )])  # fmt: skip
        return written

    def record(self, output: OutputRun) -> RunRecord:
        """The runner's steps before the pipeline: the run's record, the compute dtype fixed."""
        run = output.new_record({})
        output.fix_compute("float32", "cpu")
        return run

    def prove(self, output: OutputRun, work, **kw):
        """The runner's steps up to the proof: the run recorded, nothing marked yet."""
        run = self.record(output)
        written = self.embed(output, work, **kw)
        totals = output.tidy(run)
        proven = output.prove(run, written, totals, DuplicateReport(0), stopped=False)
        return proven, totals

    def run(self, **kw):
        output, work = self.begin()
        if work.noop:
            return output, None
        return self.finish(output, work, **kw)

    def finish(self, output: OutputRun, work, **kw):
        """The rest of a run that began: embed what is left, prove, mark, publish."""
        run = self.record(output)
        written = self.embed(output, work, **kw)
        totals = output.tidy(run)
        summary = output.finish(run, written, totals, output.duplicates(totals))
        return output, summary.published

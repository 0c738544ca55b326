"""One run on one output as a ledger transaction (``OutputRun``): begin, fix the vectors' identity,
say what lends vectors and what a carry-over left, tidy, count duplicates, and finish (prove,
refuse or mark complete, publish) — or record a failure.

Made with the job's ledger settings (``OutputSettings``) and the listing before the leased part
begins; the runner then only calls it, between the Ray work (``pipeline.backend.session``), handing
over the work left and what the passes counted. Every decision about the output's state is made here:
which rows are left, which totals to trust after a failure, what ``rows_reused`` and
``rows_removed`` mean for an ``--update``, the check/mark/remove sequence around ``_SUCCESS``, and
the publisher's one-table rule. None of it needs Ray: ``tests/pipeline/ledger/test_run.py`` drives
a whole run's bookkeeping with files written by the sink's own code.

The metadata that identifies the vectors is fixed once, after the plan resolved the compute dtype
(``fix_compute``), and never changed in place.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from pipeline.errors import JobError, UsageError
from pipeline.io.counters import Counters
from pipeline.io.layout import Layout
from pipeline.io.listing import Listing, unversioned
from pipeline.io.shard import Shard
from pipeline.io.storage import Storage, scrub
from pipeline.ledger.completeness import Proof
from pipeline.ledger.duplicates import DuplicateReport, report_duplicate_ids
from pipeline.ledger.files import Totals
from pipeline.ledger.identity import VECTOR_KEYS
from pipeline.ledger.manifest import RunRecord, mark_success, remove_success
from pipeline.ledger.output import OutputState, Work
from pipeline.ledger.publisher import PublishedLike, Publisher
from pipeline.ledger.reuse import PoolFile, reuse_from_pool, update_pool
from pipeline.ledger.summary import RunSummary
from pipeline.output_settings import OutputSettings

logger = logging.getLogger(__name__)

Timer = Callable[[str], Any]  # ``phases(name)``: a context manager timing one step
# the duplicate-id count as a Ray pass (``pipeline.backend.duplicates.duplicate_ids_on_cluster``)
CountOnCluster = Callable[[Storage, Sequence[str], Layout, int], DuplicateReport]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Proven:
    """What ``prove`` found: the proof, the rejected share, whether the output is complete."""

    proof: Proof
    bad_fraction: float
    complete: bool


class OutputRun:
    """The ledger's half of one run (see the module's doc)."""

    def __init__(
        self,
        state: OutputState,
        *,
        settings: OutputSettings,
        listing: Listing,
        run_id: str,
        metadata: Mapping[str, Any],
        publisher: Publisher | None = None,
        timer: Timer | None = None,
        started: float | None = None,
        started_at: str | None = None,
    ):
        self.state = state
        self.settings = settings
        self.listing = listing
        self.run_id = run_id
        self.metadata: Mapping[str, Any] = MappingProxyType(dict(metadata))
        self.publisher = publisher
        self._timer = timer
        self._started = time.monotonic() if started is None else started
        self.started_at = started_at or now()  # the run record's start: the job's, when the runner says it
        self.work: Work | None = None
        self.shards: list[Shard] = list(listing.shards)
        self.touched: frozenset[str] = frozenset()  # --update: sources whose earlier rows are replaced
        self.published: PublishedLike | None = None

    def _timed(self, name: str):
        return self._timer(name) if self._timer is not None else nullcontext()

    # ------------------------------------------------------------------ before the Ray work

    def begin(self) -> Work:
        """Check the output against this run's settings and inputs (and the publisher's rule); say
        what is left to do."""
        with self._timed("prepare_output"):
            work = self.state.prepare(self.settings, self.metadata, self.shards)
        listing = self.listing
        work.manifest.note_listing(listing.ignored, listing.side_files, len(unversioned(self.shards)))
        if self.publisher is not None:
            self.publisher.check(work.manifest, self.state.storage.describe())
        self.work = work
        self.touched = frozenset(src for _, sources in work.stale for src in sources)
        return work

    def fix_compute(self, compute_dtype: str, device: str) -> Mapping[str, Any]:
        """The vectors' identity, complete once the plan resolved the compute dtype: checked against
        what the output holds, recorded in the manifest; the one mapping every later write carries."""
        fixed = {"compute_dtype": compute_dtype, "device": device}
        self.metadata = MappingProxyType({**self.metadata, **fixed})
        self.state.check_compute(self._work, self.metadata)
        manifest = self._work.manifest  # the record this run saves says what it computes in
        manifest.metadata = {**manifest.metadata, **fixed}
        return self.metadata

    def noop(self) -> RunSummary:
        """Nothing left to do: the output is complete (the publisher catches up if it is behind)."""
        message = f"{self._work.manifest.rows_written} rows; pass --overwrite to start over"
        return RunSummary(status="noop", output=self.settings.output, message=message, published=self.publish_current())

    def new_record(self, phases: dict[str, float]) -> RunRecord:
        """This run's record (``phases``: the step timings, filled in as the run goes)."""
        work = self._work
        if work.rows_skipped:
            logger.info(
                "resuming: %d input rows are already in %s; %d of %d shard(s) left to read",
                work.rows_skipped, self.settings.output, len(work.shards), len(self.shards),
            )  # fmt: skip
        return RunRecord(
            run_id=self.run_id,
            started_at=self.started_at,
            rows_skipped=work.rows_skipped,
            new_shards=work.new_shards,
            phases=phases,
        )

    def carry_pool(self) -> list[PoolFile]:
        """The data files that lend vectors by text_hash: the stale files of an ``--update`` and every
        file of the ``--reuse-from`` outputs (each checked to be made compatibly). Empty when there
        is nothing to carry or nothing left to read."""
        work, settings = self._work, self.settings
        if not work.shards:
            return []
        pool = update_pool(self.state, work) if settings.update else []
        if settings.reuse_from:
            pool += reuse_from_pool(
                settings.reuse_from, settings.output, self.state.storage.storage_options, self.metadata, VECTOR_KEYS
            )
        return pool

    def carried(self) -> tuple[int, Work]:
        """After a carry-over pass wrote vectors: the rows it carried (from the footers: a row written
        twice counts once), and the reads re-planned without them (the work left)."""
        before = self._work
        left = dataclasses.replace(before)
        self.state.plan_reads(left, self.shards)
        self.work = left
        reused = left.rows_skipped - before.rows_skipped
        logger.info("carried %d vector(s) over by text_hash; encoding only the records left", reused)
        return reused, left

    # ------------------------------------------------------------------ after the Ray work

    def tidy(self, run: RunRecord) -> Totals:
        """Remove the stale rows (``--update``), repair repeats, total the output; the run's
        ``rows_reused`` counts what every attempt of this update carried (footers), and
        ``rows_removed`` the earlier rows not carried over."""
        with self._timed("remove_stale"):
            stale_rows = self.state.remove_stale(self._work, self.metadata)
        with self._timed("reconcile"):
            totals = self.state.reconcile(self.metadata)
        if self.touched:
            run.rows_reused = max(run.rows_reused, totals.carried_rows(self.touched))
        run.rows_removed = max(0, stale_rows - run.rows_reused)
        return totals

    def duplicates(self, totals: Totals, on_cluster: CountOnCluster | None = None) -> DuplicateReport:
        """Ids held by more than one row of the output (``on_cluster``: the count as a Ray pass)."""
        return report_duplicate_ids(self.state.storage, totals, on_cluster, layout=self.settings.layout)

    def failed(self, run: RunRecord, written: Counters, error: str) -> None:
        """The pipeline failed: record the run with the output's totals as they are. Stale rows share
        (source, row) with the new ones: never "repair" those while any remain."""
        run.status, run.error = "failed", error
        totals = Totals.of(self.state.files.scan()) if self._work.stale else self.state.reconcile(self.metadata)
        self.record(run, written, totals)

    def record(self, run: RunRecord, written: Counters, totals: Totals) -> None:
        """The one place a run is recorded, failed or not: its counters, the output's totals, the manifest."""
        run.ended_at = now()
        run.wall_s = round(time.monotonic() - self._started, 3)
        run.set_counters(written)
        self.state.record_run(self._work.manifest, run, totals.counters, totals.repaired_files)

    def prove(
        self, run: RunRecord, written: Counters, totals: Totals, duplicates: DuplicateReport, *, stopped: bool
    ) -> Proven:
        """Prove the output complete (or say why not) and record the run; nothing is marked yet."""
        manifest, settings = self._work.manifest, self.settings
        manifest.note_duplicates(duplicates.duplicate_ids, duplicates.examples)
        proof, bad_fraction = self.state.finish(
            manifest=manifest,
            shards=self.shards,
            totals=totals,
            allow_remainders=settings.skip_corrupt_remainders,
            max_bad_fraction=settings.max_bad_fraction,
        )
        run.status = "complete" if manifest.complete else ("stopped" if stopped else "failed")
        if not proof.ok:
            run.error = scrub(f"not complete: {proof.describe()}", self.state.storage.storage_options)[:2000]
        self.record(run, written, totals)
        return Proven(proof, bad_fraction, manifest.complete)

    def refuse_incomplete(self, proven: Proven, stop_reason: str | None, line: str) -> None:
        """No ``_SUCCESS`` for an output that is not complete: exit 1 saying why and what gets out."""
        output, proof = self.state.storage.describe(), proven.proof
        if not proof.ok and stop_reason:
            raise JobError(
                f"stopped to keep to the budget ({stop_reason}); {output} holds whole files of what was encoded, no "
                f"_SUCCESS. Rerun with a higher cap (or none) to resume exactly where it stopped. " + line
            )
        if not proof.ok:
            raise JobError(f"{output} is not complete, so no _SUCCESS: {proof.describe()}. " + line)
        if not proven.complete:
            manifest = self._work.manifest
            total = manifest.rows_written + manifest.rows_rejected
            raise JobError(
                f"{manifest.rows_rejected} of {total} records rejected ({proven.bad_fraction:.4%}), more than "
                f"--max-bad-fraction {self.settings.max_bad_fraction:g}; see {output}/_rejects/. " + line
            )
        if proof.skipped_remainders:
            logger.warning(
                "%d shard(s) broke off part-way and were accepted (--skip-corrupt-remainders): %s",
                len(proof.skipped_remainders),
                ", ".join(r.path for r in proof.skipped_remainders[:5]),
            )

    def finish(
        self,
        run: RunRecord,
        written: Counters,
        totals: Totals,
        duplicates: DuplicateReport,
        *,
        stop_reason: str | None = None,
    ) -> RunSummary:
        """Prove and record the run, then mark the output complete and publish it, or refuse (exit 1)
        saying why it is not complete and what gets out. ``stop_reason``: the run stopped itself."""
        proven = self.prove(run, written, totals, duplicates, stopped=stop_reason is not None)
        summary = RunSummary(
            status=run.status, output=self.settings.output, run=run, duplicate_ids=duplicates.duplicate_ids
        )
        self.refuse_incomplete(proven, stop_reason, summary.line())
        self.mark_complete(totals)
        summary.published = self.publish(totals.data_paths)
        return summary

    def mark_complete(self, totals: Totals) -> None:
        """``_SUCCESS``, only over the files the proof was made over: checked before, and again
        after (a file that appeared or went meanwhile takes the mark back)."""
        files, storage, fence = self.state.files, self.state.storage, self.state.fence
        files.check_unchanged(totals, "while it was proven")
        mark_success(storage, fence)
        try:
            files.check_unchanged(totals, "as it was marked complete")
        except JobError:
            remove_success(storage, fence)
            raise

    def publish(self, data_paths: Sequence[str]) -> str:
        """A complete output published (nothing when it is already there); the manifest records
        what was published and forgets the retired files the publish let go. The summary's phrase
        ('' when there is no publisher); ``self.published``: what the publisher returned."""
        manifest = self._work.manifest
        if self.publisher is None:
            if manifest.published:
                logger.warning(
                    "%s is published to table %s (catalog %s), which this run did not update; pass --iceberg-table %s",
                    self.state.storage.describe(),
                    manifest.published.get("table"),
                    manifest.published.get("catalog"),
                    manifest.published.get("table"),
                )
            return ""
        metadata = dict(self.metadata)
        for key in ("compute_dtype", "device"):  # a no-op run has no plan: the output's recorded values
            metadata.setdefault(key, manifest.metadata.get(key))
        with self._timed("publish"):
            published = self.publisher.publish(
                self.state.storage,
                manifest,
                metadata,
                data_paths,
                retired=sorted(self.state.files.retired),
                committed_by=self.run_id,
                fence=self.state.fence,
            )
        self.state.published(manifest, published.record(), published.deleted_files)
        self.published = published
        return self.publisher.line(published)

    def publish_current(self) -> str:
        """A no-op run: the output is complete; the publisher catches up if it is behind."""
        return self.publish(self.state.files.data_files())

    @property
    def _work(self) -> Work:
        if self.work is None:
            raise UsageError("OutputRun used before begin()")
        return self.work

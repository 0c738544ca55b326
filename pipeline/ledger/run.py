"""One run on one output as a ledger transaction (``OutputRun``): begin, fix the vectors' identity,
carry over, tidy, prove and mark complete — or record a failure — then publish.

The runner arranges the Ray work (the pipeline, the carry-over pass, the cluster's duplicate-id
count) and hands over what it counted; every decision about the output's state is made here:
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
from pipeline.io.listing import Listing, unversioned
from pipeline.io.shard import Shard
from pipeline.io.storage import scrub
from pipeline.ledger.completeness import Proof
from pipeline.ledger.duplicates import DuplicateReport
from pipeline.ledger.files import Totals
from pipeline.ledger.manifest import RunRecord, mark_success, remove_success
from pipeline.ledger.output import OutputState, Work
from pipeline.ledger.publisher import PublishedLike, Publisher
from pipeline.output_settings import OutputSettings

logger = logging.getLogger(__name__)

Timer = Callable[[str], Any]  # ``phases(name)``: a context manager timing one step


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
        run_id: str,
        metadata: Mapping[str, Any],
        publisher: Publisher | None = None,
        timer: Timer | None = None,
        started: float | None = None,
    ):
        self.state = state
        self.run_id = run_id
        self.metadata: Mapping[str, Any] = MappingProxyType(dict(metadata))
        self.publisher = publisher
        self._timer = timer
        self._started = time.monotonic() if started is None else started
        self.work: Work | None = None
        self.shards: list[Shard] = []
        self.touched: frozenset[str] = frozenset()  # --update: sources whose earlier rows are replaced
        self.published: PublishedLike | None = None

    def _timed(self, name: str):
        return self._timer(name) if self._timer is not None else nullcontext()

    # ------------------------------------------------------------------ before the Ray work

    def begin(self, settings: OutputSettings, listing: Listing) -> Work:
        """Check the output against this run's settings and inputs (and the publisher's rule); say
        what is left to do."""
        self.shards = list(listing.shards)
        with self._timed("prepare_output"):
            work = self.state.prepare(settings, self.metadata, self.shards)
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

    def new_record(self, started_at: str, phases: dict[str, float]) -> RunRecord:
        work = self._work
        return RunRecord(
            run_id=self.run_id,
            started_at=started_at,
            rows_skipped=work.rows_skipped,
            new_shards=work.new_shards,
            phases=phases,
        )

    def carried(self) -> tuple[int, Work]:
        """After a carry-over pass wrote vectors: the rows it carried (from the footers: a row written
        twice counts once), and the reads re-planned without them (the work left)."""
        before = self._work
        left = dataclasses.replace(before)
        self.state.plan_reads(left, self.shards)
        self.work = left
        return left.rows_skipped - before.rows_skipped, left

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
        self,
        run: RunRecord,
        written: Counters,
        totals: Totals,
        duplicates: DuplicateReport,
        *,
        allow_remainders: bool,
        max_bad_fraction: float,
        stopped: bool,
        storage_options: Mapping[str, Any],
    ) -> Proven:
        """Prove the output complete (or say why not) and record the run; nothing is marked yet."""
        manifest = self._work.manifest
        manifest.note_duplicates(duplicates.duplicate_ids, duplicates.examples)
        proof, bad_fraction = self.state.finish(
            manifest=manifest,
            shards=self.shards,
            totals=totals,
            allow_remainders=allow_remainders,
            max_bad_fraction=max_bad_fraction,
        )
        run.status = "complete" if manifest.complete else ("stopped" if stopped else "failed")
        if not proof.ok:
            run.error = scrub(f"not complete: {proof.describe()}", storage_options)[:2000]
        self.record(run, written, totals)
        return Proven(proof, bad_fraction, manifest.complete)

    def refuse_incomplete(self, proven: Proven, stop_reason: str | None, max_bad_fraction: float, line: str) -> None:
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
                f"--max-bad-fraction {max_bad_fraction:g}; see {output}/_rejects/. " + line
            )
        if proof.skipped_remainders:
            logger.warning(
                "%d shard(s) broke off part-way and were accepted (--skip-corrupt-remainders): %s",
                len(proof.skipped_remainders),
                ", ".join(r.path for r in proof.skipped_remainders[:5]),
            )

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

"""``_manifest.json`` (state, input fingerprints, totals, one entry per run) and the ``_SUCCESS`` marker.

Only the lease holder writes either (see :mod:`pipeline.ledger.lease`); callers pass the lease's fence.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.errors import UsageError
from pipeline.io.counters import Counters
from pipeline.io.storage import Storage, strip_uri_credentials

logger = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
FORMAT = "e5-embed/1"


@dataclass(kw_only=True)
class RunRecord:
    """One run, as the manifest keeps it: opened with what is known at the start (``run_id``,
    ``started_at``, what was already done); ``set_counters`` and the run's end fill in the rest."""

    run_id: str
    started_at: str
    ended_at: str = ""
    wall_s: float = 0.0
    status: str = "running"  # "running" | "complete" | "failed"
    rows_embedded: int = 0  # input records embedded
    rows_rejected: int = 0
    rows_skipped: int = 0  # rows earlier runs wrote of the shards this run reads (carried-over ones: rows_reused)
    tokens: int = 0
    truncated: int = 0
    docs_per_s: float = 0.0
    tokens_per_s: float = 0.0
    data_files: int = 0
    chunks: int = 0  # data rows written: one per record, or one per window in chunked runs
    new_shards: int = 0  # input shards this run found that earlier runs had not (incremental runs)
    budget: dict[str, Any] | None = None  # --max-gpu-hours: the cap and the last projection
    oom_splits: int = 0  # encode micro-batches split after a device out-of-memory (each lowers that actor's batch)
    rows_reused: int = 0  # rows written with a vector carried over by text_hash (--update, --reuse-from)
    rows_removed: int = 0  # rows of changed or vanished shards' earlier state that were not carried over
    reject_kinds: dict[str, int] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    # seconds per step of the run (model pin, listing, lease, output scan, plan, embed, reconcile,
    # duplicate-id check) and when (seconds after the start) the first batch reached each stage
    phases: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    # where the pipeline's wall time went (``pipeline.backend.timeline``): each role's busy and idle
    # time, Ray Data's per-operator waits
    timeline: dict[str, Any] = field(default_factory=dict)

    def set_counters(self, written: Counters) -> None:
        """What this run wrote, and its rates over its wall time."""
        self.rows_embedded, self.rows_rejected = written.rows_written, written.rows_rejected
        self.chunks = written.chunks
        self.tokens, self.truncated, self.data_files = written.tokens, written.truncated, written.data_files
        self.reject_kinds = dict(written.reject_kinds)
        self.docs_per_s = round(self.rows_embedded / self.wall_s, 2) if self.wall_s else 0.0
        self.tokens_per_s = round(self.tokens / self.wall_s, 1) if self.wall_s else 0.0


@dataclass(kw_only=True)
class Manifest:
    format: str = FORMAT
    metadata: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    shards: int = 0
    # in_progress: a run is (or was) filling the output; complete: _SUCCESS was proven;
    # clearing: an --overwrite started deleting and did not finish (only --overwrite may go on)
    state: str = "in_progress"
    complete: bool = False
    # one entry per input shard: path (as the ``source`` column holds it), size, version
    # (ETag/generation/mtime) and, once proven, rows; a changed or vanished shard is refused
    input_shards: list[dict[str, Any]] = field(default_factory=list)
    corrupt_remainders: list[dict[str, Any]] = field(default_factory=list)
    # files of unknown format skipped with --ignore-unknown-files (the latest run's listing)
    ignored_files: int = 0
    ignored_file_examples: list[str] = field(default_factory=list)
    # files under `_`/`.` names inside the input folders, never read (the latest run's listing)
    skipped_side_files: int = 0
    skipped_side_file_examples: list[str] = field(default_factory=list)
    # input shards whose store gave no ETag/generation/mtime (the latest run's listing): for these,
    # only a change of size is detected between runs
    unversioned_shards: int = 0
    rows_written: int = 0
    rows_rejected: int = 0
    chunks: int = 0  # data rows: one per record, or one per window in chunked runs
    tokens: int = 0
    truncated: int = 0
    reject_kinds: dict[str, int] = field(default_factory=dict)
    repaired_files: int = 0
    duplicate_ids: int = 0
    duplicate_id_examples: list[str] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    # published to an Iceberg table (pipeline.ledger.table): the table, its catalog and the snapshot
    # that describes this output now; once published, data files are retired instead of deleted
    published: dict[str, Any] = field(default_factory=dict)
    # data files the output no longer holds but a table snapshot may still reference: left in place
    # (never read, counted or proven) until snapshot expiry releases them
    retired_files: list[str] = field(default_factory=list)
    # mixed into data file names after an --overwrite of a published output, so a new file never
    # takes (and overwrites) the name of a retired one an older snapshot reads
    name_salt: str = ""
    # the data and rejects files the last completeness proof was made over (their names' digest): a
    # rerun that finds others (one deleted, say) checks the output again instead of a no-op
    proven_files: str = ""

    def add_run(self, run: RunRecord) -> None:
        self.runs.append(asdict(run))

    def unpublished_runs(self) -> list[dict[str, Any]]:
        """The runs whose rows the table has not seen: those after the last one a publish covered
        (``published["through_run"]``); all of them when none did (or it is not among them)."""
        through = self.published.get("through_run")
        ids = [r.get("run_id") for r in self.runs]
        return self.runs[ids.index(through) + 1 :] if through in ids else list(self.runs)

    def snapshot_summary(self, committed_by: str) -> dict[str, Any]:
        """A snapshot's summary: which runs' rows it adds (``run-ids``; ``run-id`` the one that proved
        the output complete), their counts, the output's total, and the run that committed it (a
        rerun that only publishes what a killed run proved is not the run whose rows they are)."""
        runs = self.unpublished_runs()
        proved = [r["run_id"] for r in self.runs if r.get("status") == "complete"]

        def total(key: str) -> int:
            return sum(int(r.get(key) or 0) for r in runs)

        return {
            "run-id": proved[-1] if proved else committed_by,
            "run-ids": ",".join(str(r.get("run_id")) for r in runs),
            "committed-by": committed_by,
            "rows-embedded": total("rows_embedded"),
            "rows-reused": total("rows_reused"),
            "rows-removed": total("rows_removed"),
            "rows-rejected": total("rows_rejected"),
            "rows-total": self.rows_written,
        }

    def note_listing(self, ignored: list[str], side_files: list[str], unversioned: int) -> None:
        """What the run's listing left out (saved with the run record): unknown files, side files
        skipped inside input folders (named without credentials), shards with no version."""
        self.ignored_files, self.ignored_file_examples = len(ignored), ignored[:100]
        self.skipped_side_files = len(side_files)
        self.skipped_side_file_examples = [strip_uri_credentials(p) for p in side_files[:100]]
        self.unversioned_shards = unversioned

    def note_duplicates(self, count: int, examples: list[str]) -> None:
        self.duplicate_ids, self.duplicate_id_examples = count, list(examples)

    def set_totals(self, totals: Counters) -> None:
        """Totals are rebuilt from the output's files, so runs that crashed still count."""
        self.rows_written = totals.rows_written
        self.rows_rejected = totals.rows_rejected
        self.chunks = totals.chunks
        self.tokens = totals.tokens
        self.truncated = totals.truncated
        self.reject_kinds = dict(totals.reject_kinds)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def load(cls, storage: Storage) -> "Manifest | None":
        """The output's manifest; None if there is none; UsageError naming it if it cannot be read."""
        path = storage.join(MANIFEST)
        try:
            raw = storage.read_bytes(path)
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
            manifest = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
            if not isinstance(manifest.metadata, dict) or not isinstance(manifest.input_shards, list):
                raise TypeError("metadata or input_shards of the wrong type")
            if any(not isinstance(e, dict) or "path" not in e for e in manifest.input_shards):
                raise TypeError("an input_shards entry without a path")
        except (ValueError, TypeError, AttributeError) as e:
            raise UsageError(
                f"{storage.display(path)} is damaged ({type(e).__name__}: {str(e)[:100]}); rerun with --overwrite "
                "(it rebuilds the output from the input), or delete the file to have it rebuilt from the data "
                "files' footers and _shards/ records"
            ) from e
        return manifest

    def save(self, storage: Storage, fence: Callable[[], None]) -> None:
        fence()
        storage.write_bytes_atomic(storage.join(MANIFEST), self.to_json())


def mark_success(storage: Storage, fence: Callable[[], None]) -> None:
    fence()
    storage.write_bytes_atomic(storage.join(SUCCESS), b"")


def remove_success(storage: Storage, fence: Callable[[], None]) -> None:
    fence()
    storage.delete(storage.join(SUCCESS))


def is_complete(storage: Storage) -> bool:
    return storage.exists(storage.join(SUCCESS))

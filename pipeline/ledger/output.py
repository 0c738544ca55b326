"""The state of an output location and every change to it: what work is left, and whether it is complete.

What the output holds is ``pipeline.ledger.files`` (its files and footers); what it was made with is
``pipeline.ledger.identity``; this module decides from both.

Before any actor starts: refuse to mix outputs made with different settings or from changed
input shards, no-op on a complete output whose inputs did not change, clear it safely for
``--overwrite``, prove it is writable, and read the footers of existing files to learn which
input rows are done. After the pipeline: repair repeats, prove completeness (see
:mod:`pipeline.ledger.completeness`), record the run. Every write here passes the run's lease fence.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from pipeline.errors import E5EmbedError, UsageError, step_failed
from pipeline.io import coverage
from pipeline.io.counters import Counters
from pipeline.io.shard import Shard
from pipeline.io.sink import REJECTS_DIR
from pipeline.io.storage import Storage
from pipeline.ledger import compatibility
from pipeline.ledger.completeness import Proof, fully_covered, prove
from pipeline.ledger.files import OutputFile, OutputFiles, Totals
from pipeline.ledger.identity import IDENTITY_KEYS, PRODUCER, identity, normalized_inputs, refuse_legacy_chunked
from pipeline.ledger.lease import LeaseLost
from pipeline.ledger.manifest import MANIFEST as MANIFEST_NAME
from pipeline.ledger.manifest import Manifest, RunRecord, is_complete, remove_success
from pipeline.ledger.shard_log import SHARDS_DIR, ShardRecord, read_records
from pipeline.ledger.stop import clear_stop
from pipeline.ledger.table import CATALOG_DB, CATALOG_DIR
from pipeline.output_settings import OutputSettings

logger = logging.getLogger(__name__)


def _new_salt() -> str:
    return uuid.uuid4().hex[:12]


def fingerprints(shards: Sequence[Shard]) -> list[dict[str, Any]]:
    return [{"path": s.path, "size": s.size, "version": s.version} for s in shards]


def fingerprint(entry: Mapping[str, Any]) -> tuple[int, str]:
    return int(entry.get("size", -1)), str(entry.get("version", ""))


def _merged(known: Mapping[str, Any] | None, now: Mapping[str, Any]) -> dict[str, Any]:
    """A shard's manifest entry: what a proof learned (rows, remainder) only while the shard is unchanged."""
    if known and fingerprint(known) == fingerprint(now):
        return {**known, **now}
    return dict(now)


def stale_files(
    files: Sequence["OutputFile"], current: Mapping[str, str]
) -> list[tuple["OutputFile", tuple[str, ...]]]:
    """Files holding rows of a source whose version (as the footer recorded it) is not the current
    listing's: the shard changed or vanished since those rows were read."""
    out = []
    for f in files:
        sources = tuple(sorted(s for s in f.ranges if f.versions.get(s) != current.get(s)))
        if sources:
            out.append((f, sources))
    return out


@dataclass
class Work:
    """What a run has to do on an output: nothing (``noop``), or read ``shards`` skipping ``skip``."""

    manifest: Manifest
    noop: bool = False
    shards: list[Shard] = field(default_factory=list)  # shards that still need reading
    skip: coverage.Ranges = field(default_factory=dict)  # rows of those already in files
    rows_skipped: int = 0  # input rows already in files, over all listed shards
    new_shards: int = 0  # shards the manifest did not know (an incremental run)
    # --update: files holding rows of shards that changed or vanished since (file -> those sources);
    # their rows are not done, lend their vectors to the carry-over, and are removed before the proof
    stale: list[tuple[OutputFile, tuple[str, ...]]] = field(default_factory=list)
    # the compute dtypes the output's manifest and files recorded (-> one place that says so)
    made_compute: dict[str | None, str] = field(default_factory=dict)


class OutputState:
    """Everything an output location holds, and every change to its manifest and ``_SUCCESS``.

    Changes go through the run's lease (``fence``): a run that lost it writes nothing more.
    """

    def __init__(
        self,
        storage: Storage,
        fence: Callable[[], None] = lambda: None,
        *,
        retain: bool = False,
        retired: Sequence[str] = (),
    ):
        self.storage = storage
        self.fence = fence
        # what the output holds now (its files, the retired ones, foreign part files): pipeline.ledger.files
        self.files = OutputFiles(storage, retired)
        # a published output (or one about to be): a data file it no longer holds is retired (left in
        # place for the table snapshots that may read it), never deleted here
        self.retain = retain
        self.name_salt = ""  # the output's (Manifest.name_salt)

    def _drop(self, path: str, is_rejects: bool = False) -> None:
        """A file the output no longer holds: deleted, or retired (a published output's data file).
        Retiring a name changes the name salt: the same rows written again (a shard that vanished and
        came back with the same ETag) never take the retired name, which the job no longer lists."""
        if self.retain and not is_rejects:
            self.files.retired.add(path)
            self.name_salt = _new_salt()
        else:
            self.storage.delete(path)

    def _remember(self, manifest: Manifest) -> None:
        """The manifest's copy of the retired files and of the salt new names are made with (saved
        together: a salt is current only once the names it avoids are recorded as retired)."""
        manifest.retired_files = sorted(self.files.retired)
        manifest.name_salt = self.name_salt

    def _adopt(self, manifest: Manifest) -> None:
        """What the manifest knows of published state: retention, retired files, the name salt."""
        self.retain = self.retain or bool(manifest.published)
        self.files.retired |= set(manifest.retired_files)
        self.name_salt = manifest.name_salt

    def published(self, manifest: Manifest, record: Mapping[str, Any], deleted: Sequence[str]) -> None:
        """A publish committed: the snapshot's record, and the retired files its expiry deleted."""
        self.files.retired -= set(deleted)
        manifest.published = {**record, "through_run": manifest.runs[-1]["run_id"] if manifest.runs else ""}
        self._remember(manifest)
        manifest.save(self.storage, self.fence)

    def record_run(self, manifest: Manifest, run: RunRecord, totals: Counters, repaired_files: int) -> None:
        """A run's record (failed or not) and the output's totals, saved in the manifest."""
        manifest.set_totals(totals)
        manifest.repaired_files += repaired_files
        self._remember(manifest)
        manifest.add_run(run)
        manifest.save(self.storage, self.fence)

    # ------------------------------------------------------------------ before the run

    def prepare(self, config: OutputSettings, metadata: Mapping[str, Any], shards: Sequence[Shard]) -> Work:
        """Check the output against this run's settings and inputs; say what is left to do.

        An earlier run's stop request (``_stop``, its budget) is cleared first: it is not this run's.
        ``--overwrite`` needs nothing from the output's bookkeeping (a damaged manifest or shard
        record cannot block it). Otherwise the data files' footers are checked as well as the
        manifest, and a missing manifest is rebuilt from the footers and ``_shards/`` records.
        """
        clear_stop(self.storage, self.fence)  # an earlier run's stop request (its budget) is not this run's
        cleared: Manifest | None = None
        if config.overwrite:
            self.files.remove_temp_files()
            cleared = self.clear(metadata)
            existing, complete = None, False
        else:
            existing, complete = self._read_state()
            if existing is not None:
                self._adopt(existing)
            self.files.remove_temp_files()
            if existing is not None and existing.state == "clearing":
                raise UsageError(
                    f"an --overwrite of {self.storage.describe()} did not finish; run again with --overwrite"
                )
            if existing is not None:
                self._check_identity(existing.metadata, metadata, f"{self.storage.describe()} was made")
        files = self.files.scan()
        for f in files:  # the footers, not only the manifest: a lost manifest must not hide mixed settings
            self._check_identity(f.metadata, metadata, f"{self.storage.display(f.path)} was made")
        known = {e["path"]: e for e in (existing.input_shards if existing else [])}
        recorded = existing is not None and bool(existing.input_shards)
        if existing is None and files:
            known, recorded = self._rebuilt_fingerprints(files), True
        self._check_inputs(known, shards, recorded and not config.update)
        stale = stale_files(files, {s.path: s.version_key for s in shards})
        if stale and not config.update:  # the footers say so even where the manifest does not
            changed = sorted({src for _, sources in stale for src in sources})
            raise UsageError(
                f"{self.storage.describe()} holds rows of {len(changed)} input shard(s) as they were before a "
                f"change (or an --update that did not finish): {', '.join(changed[:5])}; use --update to "
                "re-embed only what changed, or --overwrite"
            )
        new_shards = sum(1 for s in shards if s.path not in known)
        # --update: a shard whose fingerprint changed is work even with no rows in any file (it was
        # empty), and so is one that vanished with no rows: the manifest must stop listing it, or
        # every later plain run is refused over it
        changed = any(fingerprint(known[s.path]) != s.fingerprint for s in shards if s.path in known)
        listed = {s.path for s in shards}
        vanished = any(p not in listed for p in known)
        unchanged = not (new_shards or stale or changed or vanished)
        if existing is not None and complete and unchanged and not self._files_moved(existing, files):
            existing.complete = True
            return Work(manifest=existing, noop=True)
        manifest = existing or cleared or Manifest(metadata=dict(metadata))
        if existing is None:
            manifest.inputs = normalized_inputs(config.inputs)
        self._remember(manifest)
        if complete:  # new input shards, files that moved (or a rebuilt manifest): incomplete until proven
            if new_shards:
                logger.info(
                    "%d new input shard(s) since %s was completed; embedding them", new_shards, self.storage.describe()
                )
            remove_success(self.storage, self.fence)
        manifest.shards = len(shards)
        manifest.complete, manifest.state = False, "in_progress"
        manifest.input_shards = [_merged(known.get(f["path"]), f) for f in fingerprints(shards)]
        try:
            manifest.save(self.storage, self.fence)  # also proves the output is writable, before GPUs spin up
        except LeaseLost:
            raise
        except Exception as e:
            raise step_failed(f"cannot write to output {self.storage.describe()}", e) from e
        work = Work(manifest=manifest, new_shards=new_shards if existing else 0, stale=stale)
        for what, meta in [(self.storage.display(f.path), f.metadata) for f in files]:  # the vectors there
            work.made_compute.setdefault(identity(meta, "compute_dtype"), what)
        self.plan_reads(work, shards, files)
        return work

    def check_compute(self, work: Work, metadata: Mapping[str, Any]) -> None:
        """After the plan resolved the compute dtype: the output's vectors were all computed in it.
        A GPU run (bf16) and a CPU run (float32) of one output would otherwise mix their vectors.
        A check only: the run records what it computes in (``OutputRun.fix_compute``)."""
        now = metadata.get("compute_dtype")
        for made, what in work.made_compute.items():
            if made == now:
                continue
            if made is None:
                compatibility.refuse("compute_dtype", f"{what} was made")
            raise UsageError(
                f"{what} holds vectors computed in {made}; this run would compute in {now} "
                f"(on {metadata.get('device')}), and the two differ beyond rounding; run where it was made, "
                f"pass --dtype {made}, or use --overwrite or another --output"
            )

    def _files_moved(self, manifest: Manifest, files: Sequence[OutputFile]) -> bool:
        """A complete output whose files (``files``, the scan just made, and foreign ones) are not
        those its proof was made over (a data file deleted or added since): it must be checked
        again, never called complete by a no-op."""
        if not manifest.proven_files:  # proven before the names were recorded
            return False
        now = [f.path for f in files] + self.files.foreign
        if self.files.files_digest(now) == manifest.proven_files:
            return False
        logger.warning(
            "%s is marked complete but its files are not those it was proven with (%d there now): a file was "
            "deleted or added since; checking it again, re-embedding what is missing",
            self.storage.describe(),
            len(now),
        )
        return True

    def plan_reads(self, work: Work, shards: Sequence[Shard], files: Sequence[OutputFile] | None = None) -> None:
        """Which shards still need reading, skipping which rows: from the footers (``files``, else a
        fresh scan, e.g. after vectors were carried over); rows of stale files do not count."""
        if files is None:
            files = self.files.scan()
        paths = {s.path for s in shards}
        stale = {f.path: set(sources) for f, sources in work.stale}
        current = [{s: r for s, r in f.ranges.items() if s not in stale.get(f.path, ())} for f in files]
        ranges = {k: v for k, v in coverage.merge(current).items() if k in paths}
        records = self.shard_records(work.manifest, shards)
        work.shards = [s for s in shards if not fully_covered(s, records.get(s.path), ranges)]
        todo_paths = {s.path for s in work.shards}
        work.skip = {k: v for k, v in ranges.items() if k in todo_paths}
        work.rows_skipped = coverage.count(ranges)

    def remove_stale(self, work: Work, metadata: Mapping[str, Any]) -> int:
        """``--update``, after the new rows are written: rewrite each stale file without the rows of
        its changed or vanished shards (or delete it when nothing else is left); the rows removed.
        Each rewrite is published before the old file is deleted, so a crash leaves at worst a
        repeat, which the next run's reconcile repairs."""
        removed = 0
        for f, sources in work.stale:
            drop = {s: f.ranges[s] for s in sources if s in f.ranges}
            count = coverage.count(drop)
            self.fence()
            kept = coverage.count(coverage.merge([f.ranges])) - count
            new = self._rewrite_without(f, drop, metadata) if kept > 0 else None
            if new is None or new.path != f.path:
                self._drop(f.path, f.is_rejects)
            removed += count
        if work.stale:
            logger.info(
                "--update: removed %d row(s) of changed or vanished shards from %d file(s)", removed, len(work.stale)
            )
            if self.retain:  # the retired files are the manifest's to remember: at once
                self._remember(work.manifest)
                work.manifest.save(self.storage, self.fence)
        return removed

    def _read_state(self) -> tuple[Manifest | None, bool]:
        """The manifest (None if absent) and whether ``_SUCCESS`` is there."""
        try:
            return Manifest.load(self.storage), is_complete(self.storage)
        except E5EmbedError:
            raise
        except Exception as e:  # before any work: the store's moment (exit 1) or the operator's (exit 2)
            raise step_failed(f"cannot read output {self.storage.describe()}", e) from e

    def _rebuilt_fingerprints(self, files: Sequence[OutputFile]) -> dict[str, dict[str, Any]]:
        """The manifest is gone but data files are there: each shard they hold rows of must have a
        ``_shards/`` record (the fingerprint it was read at), else nothing proves it unchanged."""
        sources = sorted({source for f in files for source in f.ranges})
        records = read_records(self.storage)
        unproven = [p for p in sources if p not in records]
        if unproven:
            raise UsageError(
                f"{self.storage.describe()} has no {MANIFEST_NAME} and {len(unproven)} input shard(s) with rows in it "
                f"have no _shards/ record, so nothing proves they did not change since: "
                f"{', '.join(unproven[:5])}; use --overwrite or another --output"
            )
        logger.warning(
            "%s has no %s: rebuilding it from %d data file footer(s) and %d _shards/ record(s)",
            self.storage.describe(),
            MANIFEST_NAME,
            len(files),
            len(records),
        )
        return {p: {"path": p, "size": r.size, "version": r.version} for p, r in records.items()}

    def _check_identity(self, existing: Mapping[str, Any], metadata: Mapping[str, Any], what: str) -> None:
        """``what`` (the output, or one of its files) was made with ``existing`` settings: refuse others."""
        refuse_legacy_chunked(existing, what)
        if metadata.get("model_sha") is not None:  # lacking a digest, any model of the same name would pass
            compatibility.refuse_lacking(existing, "model_sha", what)
        mismatched = [
            k
            for k in IDENTITY_KEYS
            if identity(existing, k) != identity(metadata, k)
            # "auto" resolves with the plan: checked then (check_compute)
            and not (k == "compute_dtype" and identity(metadata, k) is None)
            and not compatibility.matches_any(existing, k)
        ]
        if mismatched:
            diffs = "; ".join(f"{k}: {existing.get(k)!r} -> {metadata.get(k)!r}" for k in mismatched)
            raise UsageError(f"{what} with different settings ({diffs}); use another --output or --overwrite")

    def _check_inputs(self, known: Mapping[str, Mapping[str, Any]], shards: Sequence[Shard], recorded: bool) -> None:
        """A shard that changed or vanished since it was recorded would mix two corpora: refuse."""
        if not recorded:
            return
        current = {s.path: s for s in shards}
        changed = [p for p, e in known.items() if p in current and fingerprint(e) != current[p].fingerprint]
        vanished = [p for p in known if p not in current]
        if changed or vanished:
            parts = []
            if changed:
                parts.append(f"{len(changed)} changed since they were embedded: {', '.join(changed[:5])}")
                if any(str(known[p].get("version", "")).startswith("mtime:") for p in changed):
                    parts.append(
                        "local shards recorded by size and mtime alone (before inode and ctime were recorded) "
                        "cannot be proven unchanged"
                    )
            if vanished:
                parts.append(f"{len(vanished)} no longer listed: {', '.join(vanished[:5])}")
            raise UsageError(
                f"input shards of {self.storage.describe()} differ from the recorded ones ("
                + "; ".join(parts)
                + "); use --update to re-embed only what changed, or --overwrite to embed the corpus as it is now"
            )

    def clear(self, metadata: Mapping[str, Any]) -> Manifest:
        """``--overwrite``: first make the output visibly incomplete, then delete what e5-embed wrote.

        ``_SUCCESS`` goes first and the manifest says ``clearing`` until every file is gone, so a
        crash part-way never leaves a complete-looking output; only files whose footer names
        this producer are deleted. A published output's data files are retired instead (its table's
        snapshots read them until they expire), and its new files get names of their own (a fresh
        ``name_salt``). Returns the new, empty manifest.
        """
        try:  # best effort: a damaged manifest cannot block --overwrite
            old = Manifest.load(self.storage)
        except Exception:
            old = None
        if old is not None:
            self._adopt(old)
        elif self.storage.exists(self.storage.join(CATALOG_DIR, CATALOG_DB)):
            self.retain = True  # published (its manifest is damaged): the table's snapshots read its files
        remove_success(self.storage, self.fence)
        manifest = Manifest(metadata=dict(metadata), state="clearing")
        if self.retain:  # new names of their own: never one a snapshot reads, even with no manifest to say so
            manifest.published = dict(old.published) if old is not None else {}
            resumed = old is not None and old.state == "clearing" and old.name_salt
            manifest.name_salt = old.name_salt if resumed else _new_salt()
        self.name_salt = manifest.name_salt
        self._remember(manifest)
        manifest.save(self.storage, self.fence)  # "clearing" before anything is deleted or retired
        files = self.files.scan()
        if self.retain:  # the table's snapshots read them: retired, not deleted
            self.files.retired |= {f.path for f in files if not f.is_rejects}
            self._remember(manifest)
            manifest.save(self.storage, self.fence)
        records = [p for p, _ in self.storage.list_files(SHARDS_DIR)]
        self.fence()
        for path in [f.path for f in files if f.is_rejects or not self.retain] + records:
            self.storage.delete(path)
        logger.info("--overwrite: cleared %d file(s) from %s", len(files), self.storage.describe())
        return manifest

    def shard_records(self, manifest: Manifest, shards: Sequence[Shard]) -> dict[str, ShardRecord]:
        """Shard records: from the manifest where a proof already counted the rows, else ``_shards/``."""
        known = {
            e["path"]: ShardRecord(
                path=e["path"],
                size=int(e["size"]),
                version=str(e["version"]),
                rows=int(e["rows"]),
                remainder=e.get("remainder"),
            )
            for e in manifest.input_shards
            if e.get("rows") is not None
        }
        wanted = {s.path for s in shards if s.path not in known}
        return {**known, **(read_records(self.storage, wanted) if wanted else {})}

    # ------------------------------------------------------------------ after the run

    def reconcile(self, metadata: Mapping[str, Any]) -> Totals:
        """Make every input row appear at most once, then total the output from its files.

        Overlaps can't come from this job's own writes (a retried write reuses its name,
        a rerun skips done rows) but are repaired rather than trusted: a file whose rows
        are all in files kept before it is deleted; a partly overlapping one, or one that holds
        a row twice, is rewritten without the repeats.
        """
        files = self.files.scan()
        if coverage.overlap(f.ranges for f in files) == 0:
            return Totals.of(files)
        seen: coverage.Ranges = {}  # rows of the files kept so far, merged as they are kept
        live: list[OutputFile] = []
        live_paths: set[str] = set()
        repaired = 0
        for f in sorted(files, key=lambda f: (f.is_rejects, -f.stats.get("rows", 0), f.path)):
            if f.path in live_paths:
                continue  # a rewrite below produced this very file (same rows, same name)
            dup = coverage.count(coverage.intersect(f.ranges, seen))
            repeats = coverage.overlap([f.ranges])  # a row twice within this very file
            if dup or repeats:
                self.fence()
                repaired += 1
                unique = coverage.count(coverage.merge([f.ranges]))
                new = self._rewrite_without(f, seen, metadata) if dup < unique else None
                if new is None or new.path != f.path:
                    self._drop(f.path, f.is_rejects)
                logger.warning("removed %d duplicate row(s) found in %s", dup + repeats, f.path)
                if new is None:
                    continue
                f = new
            seen = coverage.merge([seen, f.ranges])
            live.append(f)
            live_paths.add(f.path)
        return Totals.of(live, repaired)

    def _rewrite_without(self, f: "OutputFile", seen: coverage.Ranges, metadata: Mapping[str, Any]) -> "OutputFile":
        from pipeline.io.sink import file_stats, put_file

        with self.storage.open(f.path) as fh:
            table = pq.read_table(fh)
        table = table.filter(coverage.mask_outside(table, seen)).replace_schema_metadata(None)
        table = table.take(coverage.first_of_each_row(table))
        stats = file_stats(table)
        ranges = coverage.ranges_of(table)
        versions = {s: v for s, v in f.versions.items() if s in ranges}
        folder = REJECTS_DIR if f.is_rejects else ""
        path = put_file(self.storage, folder, table, metadata, stats, versions, name_salt=self.name_salt)
        return OutputFile(
            path=path,
            is_rejects=f.is_rejects,
            ranges=ranges,
            stats=stats,
            producer=PRODUCER,
            metadata=dict(metadata),
            versions=versions,
        )

    def finish(
        self,
        *,
        manifest: Manifest,
        shards: Sequence[Shard],
        totals: "Totals",
        allow_remainders: bool,
        max_bad_fraction: float,
    ) -> tuple[Proof, float]:
        """Prove completeness over the files ``totals`` was summed from (reconcile's result: no second
        footer scan) and record the outcome in ``manifest``; the caller saves it and writes ``_SUCCESS``.

        Returns the proof and the rejected fraction.
        """
        foreign = self.files.foreign
        if foreign:  # a reader globbing part-*.parquet would take their rows for the output's
            raise UsageError(
                f"{self.storage.describe()} holds {len(foreign)} part-*.parquet file(s) e5-embed did not write "
                f"(e.g. {self.storage.display(foreign[0])}), which readers would take for part of the output; "
                "move or delete them, then run again: the rerun only proves the output complete and marks it"
            )
        records = self.shard_records(manifest, shards)
        proof = prove(shards, records, list(totals.file_ranges), allow_remainders=allow_remainders)
        manifest.set_totals(totals.counters)
        total = manifest.rows_written + manifest.rows_rejected
        bad_fraction = manifest.rows_rejected / total if total else 0.0
        complete = proof.complete_shards(shards)
        by_path = {e["path"]: e for e in manifest.input_shards}
        for path in complete:
            record = records[path]
            by_path[path].update(rows=record.rows, remainder=record.remainder)
        manifest.corrupt_remainders = [
            {"path": r.path, "rows_before": r.rows, "reason": r.remainder}
            for r in proof.skipped_remainders + proof.corrupt
        ]
        manifest.complete = proof.ok and bad_fraction <= max_bad_fraction
        manifest.state = "complete" if manifest.complete else "in_progress"
        manifest.proven_files = self.files.files_digest(totals.paths) if manifest.complete else ""
        return proof, bad_fraction

"""The state of an output location: what was made there, with what, from which inputs, and what is done.

Before any actor starts: refuse to mix outputs made with different settings or from changed
input shards, no-op on a complete output whose inputs did not change, clear it safely for
``--overwrite``, prove it is writable, and read the footers of existing files to learn which
input rows are done. After the pipeline: repair repeats, prove completeness (see
:mod:`pipeline.ledger.completeness`), record the run. Every write here passes the run's lease fence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from pipeline.config import OutputSettings
from pipeline.errors import E5EmbedError, TransientError, UsageError, step_failed
from pipeline.io import coverage, schemas, text_hash
from pipeline.io.counters import Counters
from pipeline.io.listing import Shard
from pipeline.io.sink import REJECTS_DIR
from pipeline.io.storage import Storage, normalize_uri
from pipeline.ledger.completeness import Proof, fully_covered, prove
from pipeline.ledger.lease import LeaseLost
from pipeline.ledger.manifest import MANIFEST as MANIFEST_NAME
from pipeline.ledger.manifest import Manifest, is_complete, remove_success
from pipeline.ledger.shard_log import SHARDS_DIR, ShardRecord, read_records
from pipeline.stages.model import ModelInfo

logger = logging.getLogger(__name__)

# What makes two outputs' vectors interchangeable for rows of equal text_hash (--reuse-from):
# the model and how it is run; not where the records came from or how they were named. The
# compute dtype is the one the encoders resolved (bf16 on a GPU, float32 on CPU for "auto"), not
# the asked-for setting; the device class is recorded but does not count (docs/exactly-once.md).
VECTOR_KEYS = (
    "model",
    "model_sha",
    "prefix",
    "pooling",
    "normalized",
    "dim",
    "max_length",
    "compute_dtype",
    "output_dtype",
    "chunking",
    "text_hash",
)
# Settings an output is made with: it is never a mix of two of these.
IDENTITY_KEYS = (
    *VECTOR_KEYS,
    "revision",
    "text_field",
    "id_field",
    "title_field",
    "input_format",
    "inputs",
    "derived_ids",
)
PRODUCER = schemas.PRODUCER


def output_metadata(config: OutputSettings, info: ModelInfo, model_sha: str | None = None) -> dict[str, Any]:
    """The ``e5_embed`` Parquet metadata (and the manifest's ``metadata``)."""
    meta = {
        "model": config.model,
        "revision": config.revision,
        "prefix": config.prefix_text,
        "pooling": "mean",
        "normalized": True,
        "dim": info.hidden_size,
        "max_length": config.max_length,
        "dtype": config.dtype,
        "output_dtype": config.output_dtype,
        "text_field": config.text_field,
        "id_field": config.id_field,
        "title_field": config.title_field,
        "input_format": config.input_format,
        "inputs": normalized_inputs(config.inputs),
        "model_sha": model_sha,  # the Hub commit (git:<sha>) or the local folder's content digest
        # every row's fingerprint of what the model read (its scheme depends on chunking)
        "text_hash": text_hash.scheme(config.chunking is not None),
        "producer": PRODUCER,
    }
    if len(meta["inputs"]) > 1:  # one input: ids relative to it, as they always were
        # several inputs: relative to their common root, so two inputs' part-0 files cannot collide;
        # an output made before (ids relative to each input) is refused rather than mixed
        meta["derived_ids"] = "relative to the inputs' common root"
    chunking = config.chunking
    if chunking is not None:  # absent in truncating runs: their metadata is what it always was
        meta["chunking"] = chunking.metadata()
    return meta


def normalized_inputs(inputs: Sequence[str]) -> list[str]:
    return sorted({normalize_uri(i) for i in inputs})


def identity(metadata: Mapping[str, Any], key: str) -> Any:
    value = metadata.get(key)
    if key == "text_hash":  # the legacy scheme name, read as what it meant
        return text_hash.recorded_scheme(value, metadata.get("chunking") is not None)
    if key == "compute_dtype" and value is None:  # made before it was recorded: known only if asked for
        asked = metadata.get("dtype")
        return None if asked in (None, "auto") else asked
    return normalized_inputs(value or []) if key == "inputs" else value


def refuse_legacy_chunked(made: Mapping[str, Any], what: str) -> None:
    """A chunked output made with the first chunked text_hash (title NUL text): its fingerprints
    are ambiguous, so no row of it may be matched by text_hash again."""
    if text_hash.legacy_chunked(made.get("text_hash"), made.get("chunking") is not None):
        raise UsageError(
            f"{what} with the first chunked text_hash scheme ({text_hash.LEGACY_SCHEME!r}), under which a "
            "title and a text holding NUL characters can share a fingerprint with another record; its "
            "fingerprints cannot be trusted to match texts. Embed it again with --overwrite (or into another "
            "--output)"
        )


def fingerprints(shards: Sequence[Shard]) -> list[dict[str, Any]]:
    return [{"path": s.path, "size": s.size, "version": s.version} for s in shards]


def _fingerprint(entry: Mapping[str, Any]) -> tuple[int, str]:
    return int(entry.get("size", -1)), str(entry.get("version", ""))


def _merged(known: Mapping[str, Any] | None, now: Mapping[str, Any]) -> dict[str, Any]:
    """A shard's manifest entry: what a proof learned (rows, remainder) only while the shard is unchanged."""
    if known and _fingerprint(known) == _fingerprint(now):
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
        self.foreign: list[str] = []  # part-*.parquet files the last scan found that e5-embed did not write
        # a published output (or one about to be): a data file it no longer holds is retired (left in
        # place for the table snapshots that may read it), never deleted here
        self.retain = retain
        self.retired: set[str] = set(retired)
        self.name_salt = ""  # the output's (Manifest.name_salt)

    def _drop(self, path: str, is_rejects: bool = False) -> None:
        """A file the output no longer holds: deleted, or retired (a published output's data file)."""
        if self.retain and not is_rejects:
            self.retired.add(path)
        else:
            self.storage.delete(path)

    def _adopt(self, manifest: Manifest) -> None:
        """What the manifest knows of published state: retention, retired files, the name salt."""
        self.retain = self.retain or bool(manifest.published)
        self.retired |= set(manifest.retired_files)
        self.name_salt = manifest.name_salt

    # ------------------------------------------------------------------ before the run

    def prepare(self, config: OutputSettings, metadata: Mapping[str, Any], shards: Sequence[Shard]) -> Work:
        """Check the output against this run's settings and inputs; say what is left to do.

        ``--overwrite`` needs nothing from the output's bookkeeping (a damaged manifest or shard
        record cannot block it). Otherwise the data files' footers are checked as well as the
        manifest, and a missing manifest is rebuilt from the footers and ``_shards/`` records.
        """
        cleared: Manifest | None = None
        if config.overwrite:
            self.remove_temp_files()
            cleared = self.clear(metadata)
            existing, complete = None, False
        else:
            existing, complete = self._read_state()
            if existing is not None:
                self._adopt(existing)
            self.remove_temp_files()
            if existing is not None and existing.state == "clearing":
                raise UsageError(
                    f"an --overwrite of {self.storage.describe()} did not finish; run again with --overwrite"
                )
            if existing is not None:
                self._check_identity(existing.metadata, metadata, f"{self.storage.describe()} was made")
        files = self.scan()
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
        changed = any(_fingerprint(known[s.path]) != s.fingerprint for s in shards if s.path in known)
        listed = {s.path for s in shards}
        vanished = any(p not in listed for p in known)
        unchanged = not (new_shards or stale or changed or vanished)
        if existing is not None and complete and unchanged and not self._files_moved(existing, files):
            existing.complete = True
            return Work(manifest=existing, noop=True)
        manifest = existing or cleared or Manifest(metadata=dict(metadata))
        if existing is None:
            manifest.inputs = normalized_inputs(config.inputs)
        manifest.retired_files = sorted(self.retired)
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
        A GPU run (bf16) and a CPU run (float32) of one output would otherwise mix their vectors."""
        now = metadata.get("compute_dtype")
        for made, what in work.made_compute.items():
            if made == now:
                continue
            if made is None:
                raise UsageError(
                    f"{what} was made before the compute dtype was recorded (--dtype auto: bf16 on a GPU, "
                    f"float32 on CPU), so its vectors cannot be shown to be {now} like this run's; "
                    "use --overwrite or another --output"
                )
            raise UsageError(
                f"{what} holds vectors computed in {made}; this run would compute in {now} "
                f"(on {metadata.get('device')}), and the two differ beyond rounding; run where it was made, "
                f"pass --dtype {made}, or use --overwrite or another --output"
            )
        work.manifest.metadata.update({k: metadata[k] for k in ("compute_dtype", "device") if k in metadata})

    def files_digest(self, paths: Sequence[str]) -> str:
        """A digest of the output's file names (relative to it): what a proof was made over."""
        names = sorted(posixpath.relpath(p, self.storage.root) for p in paths)
        return hashlib.sha256("\n".join(names).encode()).hexdigest()[:32]

    def _files_moved(self, manifest: Manifest, files: Sequence[OutputFile]) -> bool:
        """A complete output whose files (``files``, the scan just made, and foreign ones) are not
        those its proof was made over (a data file deleted or added since): it must be checked
        again, never called complete by a no-op."""
        if not manifest.proven_files:  # proven before the names were recorded
            return False
        now = [f.path for f in files] + self.foreign
        if self.files_digest(now) == manifest.proven_files:
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
            files = self.scan()
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
                work.manifest.retired_files = sorted(self.retired)
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
        if existing.get("model_sha") is None and metadata.get("model_sha") is not None:
            # made before model digests were recorded: any model of the same name would pass
            raise UsageError(
                f"{what} before this job recorded model digests, so the model that made it cannot be "
                f"checked against {metadata.get('model_sha')}; use --overwrite or another --output"
            )
        mismatched = [
            k
            for k in IDENTITY_KEYS
            if identity(existing, k) != identity(metadata, k)
            # "auto" resolves with the plan: checked then (check_compute)
            and not (k == "compute_dtype" and identity(metadata, k) is None)
            # outputs made before input_format was recorded are resumed without it
            and not (k == "input_format" and k not in existing)
        ]
        if mismatched:
            diffs = "; ".join(f"{k}: {existing.get(k)!r} -> {metadata.get(k)!r}" for k in mismatched)
            raise UsageError(f"{what} with different settings ({diffs}); use another --output or --overwrite")

    def _check_inputs(self, known: Mapping[str, Mapping[str, Any]], shards: Sequence[Shard], recorded: bool) -> None:
        """A shard that changed or vanished since it was recorded would mix two corpora: refuse."""
        if not recorded:
            return
        current = {s.path: s for s in shards}
        changed = [p for p, e in known.items() if p in current and _fingerprint(e) != current[p].fingerprint]
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
        remove_success(self.storage, self.fence)
        manifest = Manifest(metadata=dict(metadata), state="clearing")
        if self.retain and old is not None:
            manifest.published = dict(old.published)
            manifest.name_salt = uuid.uuid4().hex[:12] if old.state != "clearing" else old.name_salt
        self.name_salt = manifest.name_salt
        manifest.retired_files = sorted(self.retired)
        manifest.save(self.storage, self.fence)  # "clearing" before anything is deleted or retired
        files = self.scan()
        if self.retain:  # the table's snapshots read them: retired, not deleted
            self.retired |= {f.path for f in files if not f.is_rejects}
            manifest.retired_files = sorted(self.retired)
            manifest.save(self.storage, self.fence)
        records = [p for p, _ in self.storage.list_files(SHARDS_DIR)]
        self.fence()
        for path in [f.path for f in files if f.is_rejects or not self.retain] + records:
            self.storage.delete(path)
        logger.info("--overwrite: cleared %d file(s) from %s", len(files), self.storage.describe())
        return manifest

    def _files(self, folder: str = "") -> list[str]:
        """The part-*.parquet files the output holds (retired ones are not the output's any more)."""
        return [
            p
            for p, _ in self.storage.list_files(folder)
            if posixpath.basename(p).startswith("part-") and p.endswith(".parquet") and p not in self.retired
        ]

    def remove_temp_files(self) -> None:
        """Local temp files of writes a crash interrupted (object stores have none)."""
        if self.storage.is_local:
            for folder in ("", REJECTS_DIR, SHARDS_DIR):  # not _lease/: another run may be mid-create there
                for path, _ in self.storage.list_files(folder):
                    if posixpath.basename(path).startswith("._tmp-"):
                        self.storage.delete(path)

    def scan(self) -> list[OutputFile]:
        """Every data and rejects file with its footer's coverage and counters (footers only, in parallel)."""
        listed = [(p, False) for p in self._files()] + [(p, True) for p in self._files(REJECTS_DIR)]

        def read(item: tuple[str, bool]) -> OutputFile:
            path, is_rejects = item
            try:
                with self.storage.open(path) as f:
                    meta = pq.read_schema(f).metadata or {}
            except Exception as e:  # a cut or foreign file: named, exit 2; the store's moment: exit 1
                raise step_failed(f"cannot read the Parquet footer of {self.storage.display(path)}", e) from e
            produced = json.loads(meta.get(schemas.METADATA_KEY) or b"{}")
            produced = produced if isinstance(produced, dict) else {}
            return OutputFile(
                path=path,
                is_rejects=is_rejects,
                ranges=coverage.decode(meta.get(schemas.COVERAGE_KEY)),
                stats=json.loads(meta.get(schemas.STATS_KEY) or b"{}"),
                producer=produced.get("producer"),
                metadata=produced,
                versions=json.loads(meta.get(schemas.VERSIONS_KEY) or b"{}"),
            )

        with ThreadPoolExecutor(max_workers=16) as pool:
            files = list(pool.map(read, listed))
        foreign = [f.path for f in files if f.producer != PRODUCER]
        self.foreign = foreign
        if foreign:  # not ours: never counted, repaired or deleted, and no _SUCCESS while they are there
            logger.warning(
                "%s holds %d part-*.parquet file(s) e5-embed did not write (ignored), e.g. %s",
                self.storage.describe(),
                len(foreign),
                foreign[0],
            )
        return [f for f in files if f.producer == PRODUCER]

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

    def data_files(self) -> list[str]:
        """The output's data files (names only: no footer is read; retired ones are not the output's)."""
        return self._files()

    def listed_files(self) -> frozenset[str]:
        """The data and rejects files there now (names only: no footer is read)."""
        return frozenset(self._files()) | frozenset(self._files(REJECTS_DIR))

    def check_unchanged(self, totals: "Totals", when: str) -> None:
        """The files are still exactly those the proof was made over: a write of an earlier run
        (a dead driver's last write task) that lands late must never sit under ``_SUCCESS``."""
        now = self.listed_files() - set(self.foreign)
        if now != set(totals.paths):
            appeared, gone = sorted(now - set(totals.paths)), sorted(set(totals.paths) - now)
            raise TransientError(
                f"the files of {self.storage.describe()} changed {when} ({len(appeared)} appeared, e.g. "
                f"{appeared[:2]}; {len(gone)} vanished, e.g. {gone[:2]}): a late write of an earlier run? "
                "Not marked complete; run again to reconcile and prove it"
            )

    def reconcile(self, metadata: Mapping[str, Any]) -> Totals:
        """Make every input row appear at most once, then total the output from its files.

        Overlaps can't come from this job's own writes (a retried write reuses its name,
        a rerun skips done rows) but are repaired rather than trusted: a file whose rows
        are all in files kept before it is deleted; a partly overlapping one, or one that holds
        a row twice, is rewritten without the repeats.
        """
        files = self.scan()
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
        if self.foreign:  # a reader globbing part-*.parquet would take their rows for the output's
            raise UsageError(
                f"{self.storage.describe()} holds {len(self.foreign)} part-*.parquet file(s) e5-embed did not write "
                f"(e.g. {self.storage.display(self.foreign[0])}), which readers would take for part of the output; "
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
        manifest.proven_files = self.files_digest(totals.paths) if manifest.complete else ""
        return proof, bad_fraction


@dataclass
class OutputFile:
    path: str
    is_rejects: bool
    ranges: coverage.Ranges
    stats: dict[str, Any]
    producer: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # the footer's e5_embed settings
    versions: dict[str, str] = field(default_factory=dict)  # source -> its version key when read


@dataclass(frozen=True)
class Totals:
    """The output's counters summed from its files' footers, and what reconcile repaired."""

    counters: Counters
    repaired_files: int = 0
    data_paths: tuple[str, ...] = ()
    file_ranges: tuple[coverage.Ranges, ...] = ()  # each file's coverage, for the completeness proof
    paths: tuple[str, ...] = ()  # every file summed (data and rejects)
    # data files written with carried-over vectors: (the sources they hold rows of, rows)
    carried: tuple[tuple[frozenset[str], int], ...] = ()

    def carried_rows(self, sources: set[str] | frozenset[str]) -> int:
        """Rows written with carried vectors in files holding rows of ``sources``, by any attempt."""
        return sum(rows for held, rows in self.carried if held & sources)

    @classmethod
    def of(cls, files: Sequence[OutputFile], repaired: int = 0) -> "Totals":
        return cls(
            counters=Counters.total(Counters.from_footer(f.stats, is_rejects=f.is_rejects) for f in files),
            repaired_files=repaired,
            data_paths=tuple(f.path for f in files if not f.is_rejects),
            file_ranges=tuple(f.ranges for f in files),
            paths=tuple(f.path for f in files),
            carried=tuple(
                (frozenset(f.ranges), int(f.stats["carried"]))
                for f in files
                if f.stats.get("carried") and not f.is_rejects
            ),
        )

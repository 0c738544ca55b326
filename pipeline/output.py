"""The state of an output location: what was made there, with what, and what is done.

Before any actor starts: refuse to mix outputs made with different settings,
no-op on a complete output, clear it for ``--overwrite``, prove it is writable,
and read the footers of existing files to learn which input rows are done.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pyarrow.parquet as pq

from pipeline import coverage, schemas
from pipeline.config import JobConfig
from pipeline.errors import UsageError
from pipeline.manifest import MANIFEST, SUCCESS, Manifest, is_complete
from pipeline.model import ModelInfo
from pipeline.sink import REJECTS_DIR
from pipeline.sources import Shard
from pipeline.storage import Storage

logger = logging.getLogger(__name__)

# Settings that change the embeddings: an output is never a mix of two of these.
IDENTITY_KEYS = ("model", "revision", "prefix", "pooling", "normalized", "dim", "max_length", "dtype",
                 "output_dtype", "text_field", "id_field", "title_field", "inputs")


def output_metadata(config: JobConfig, info: ModelInfo) -> dict[str, Any]:
    """The ``e5_embed`` Parquet metadata (and the manifest's ``metadata``)."""
    return {
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
        "inputs": sorted(config.inputs),
        "producer": "e5-embed",
    }


class OutputState:
    def __init__(self, storage: Storage):
        self.storage = storage

    def prepare(self, config: JobConfig, metadata: Mapping[str, Any], shards: Sequence[Shard]) -> Manifest:
        """The manifest to record this run in; ``complete`` is set when there is nothing to do."""
        try:
            existing = Manifest.load(self.storage)
            complete = is_complete(self.storage)
        except Exception as e:  # before any work: any failure to read the output is a config error
            raise UsageError(f"cannot read output {self.storage.describe()}: {type(e).__name__}: {e}") from e
        self.remove_temp_files()
        if config.overwrite:
            self.clear()
            existing, complete = None, False
        elif existing is not None:
            mismatched = [k for k in IDENTITY_KEYS if existing.metadata.get(k) != metadata.get(k)]
            if mismatched:
                diffs = "; ".join(f"{k}: {existing.metadata.get(k)!r} -> {metadata.get(k)!r}" for k in mismatched)
                raise UsageError(f"{self.storage.describe()} was made with different settings ({diffs}); "
                                 f"use another --output or --overwrite")
            if complete:
                existing.complete = True
                return existing
        manifest = existing or Manifest(metadata=dict(metadata), inputs=sorted(config.inputs))
        manifest.shards = len(shards)
        manifest.complete = False
        try:
            manifest.save(self.storage)  # also proves the output is writable, before GPUs spin up
        except Exception as e:
            raise UsageError(f"cannot write to output {self.storage.describe()}: {type(e).__name__}: {e}") from e
        return manifest

    def clear(self) -> None:
        """Remove what e5-embed wrote (data files, rejects, manifest, marker); nothing else."""
        fs = self.storage.fs
        for path in self._files() + [self.storage.join(REJECTS_DIR), self.storage.join(SUCCESS),
                                          self.storage.join(MANIFEST)]:
            self.storage.delete(path)
        logger.info("--overwrite: cleared %s", self.storage.describe())
        fs.invalidate_cache()

    def _files(self, folder: str = "") -> list[str]:
        pattern = self.storage.join(folder, "part-*.parquet") if folder else self.storage.join("part-*.parquet")
        try:
            return sorted(self.storage.fs.glob(pattern))
        except FileNotFoundError:
            return []

    def remove_temp_files(self) -> None:
        """Local temp files of writes a crash interrupted (object stores have none)."""
        if self.storage.is_local:
            for folder in ("", REJECTS_DIR):
                for path in self.storage.fs.glob(self.storage.join(folder, "._tmp-*")):
                    self.storage.delete(path)

    def scan(self) -> list[OutputFile]:
        """Every data and rejects file with its footer's coverage and counters (footers only, in parallel)."""
        self.storage.fs.invalidate_cache()
        listed = [(p, False) for p in self._files()] + [(p, True) for p in self._files(REJECTS_DIR)]
        fs = self.storage.fs

        def read(item: tuple[str, bool]) -> OutputFile:
            path, is_rejects = item
            with fs.open(path, "rb") as f:
                meta = pq.read_schema(f).metadata or {}
            return OutputFile(path=path, is_rejects=is_rejects, ranges=coverage.decode(meta.get(schemas.COVERAGE_KEY)),
                              stats=json.loads(meta.get(schemas.STATS_KEY) or b"{}"))

        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(read, listed))

    def done_ranges(self, shards: Sequence[Shard]) -> coverage.Ranges:
        paths = {s.path for s in shards}
        merged = coverage.merge(f.ranges for f in self.scan())
        return {k: v for k, v in merged.items() if k in paths}

    def reconcile(self, metadata: Mapping[str, Any]) -> Totals:
        """Make every input row appear at most once, then total the output from its files.

        Overlaps can't come from this job's own writes (a retried write reuses its name,
        a rerun skips done rows) but are repaired rather than trusted: a file whose rows
        are all in files kept before it is deleted; a partly overlapping one is rewritten
        without the overlap.
        """
        files = self.scan()
        if coverage.overlap(f.ranges for f in files) == 0:
            return Totals.of(files)
        kept: list[coverage.Ranges] = []
        live: list[OutputFile] = []
        repaired = 0
        for f in sorted(files, key=lambda f: (f.is_rejects, -f.stats.get("rows", 0), f.path)):
            if any(f.path == k.path for k in live):
                continue  # a rewrite below produced this very file (same rows, same name)
            seen = coverage.merge(kept)
            dup = coverage.count(coverage.intersect(f.ranges, seen))
            if dup:
                repaired += 1
                new = self._rewrite_without(f, seen, metadata) if dup < coverage.count(f.ranges) else None
                self.storage.delete(f.path)
                logger.warning("removed %d duplicate row(s) found in %s", dup, f.path)
                if new is None:
                    continue
                f = new
            kept.append(f.ranges)
            live.append(f)
        return Totals.of(live, repaired)

    def _rewrite_without(self, f: "OutputFile", seen: coverage.Ranges, metadata: Mapping[str, Any]) -> "OutputFile":
        from pipeline.sink import file_stats, put_file

        with self.storage.fs.open(f.path, "rb") as fh:
            table = pq.read_table(fh)
        keep = coverage.mask_outside(table, seen)
        table = table.filter(keep).replace_schema_metadata(None)
        stats = file_stats(table)
        path = put_file(self.storage, REJECTS_DIR if f.is_rejects else "", table, metadata, stats)
        return OutputFile(path=path, is_rejects=f.is_rejects, ranges=coverage.ranges_of(table), stats=stats)


@dataclass
class OutputFile:
    path: str
    is_rejects: bool
    ranges: coverage.Ranges
    stats: dict[str, Any]


@dataclass(frozen=True)
class Totals:
    rows_written: int
    rows_rejected: int
    tokens: int
    truncated: int
    data_files: int
    reject_kinds: dict[str, int]
    repaired_files: int
    data_paths: tuple[str, ...] = ()

    @classmethod
    def of(cls, files: Sequence[OutputFile], repaired: int = 0) -> "Totals":
        kinds: dict[str, int] = {}
        for f in files:
            for k, n in f.stats.get("reject_kinds", {}).items():
                kinds[k] = kinds.get(k, 0) + n
        data = [f for f in files if not f.is_rejects]
        return cls(rows_written=sum(f.stats.get("rows", 0) for f in data),
                   rows_rejected=sum(f.stats.get("rows", 0) for f in files if f.is_rejects),
                   tokens=sum(f.stats.get("tokens", 0) for f in data),
                   truncated=sum(f.stats.get("truncated", 0) for f in data),
                   data_files=len(data), reject_kinds=kinds, repaired_files=repaired,
                   data_paths=tuple(f.path for f in data))

"""The state of an output location: what was made there, with what, and what is done.

Before any actor starts: refuse to mix outputs made with different settings,
no-op on a complete output, clear it for ``--overwrite``, prove it is writable,
and read the footers of existing files to learn which input rows are done.
"""

from __future__ import annotations

import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
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

    def prepare(self, config: JobConfig, metadata: Mapping[str, Any], shards: Sequence[Shard]) -> Manifest | None:
        """A manifest to record this run in, or None when the output is already complete."""
        try:
            existing = Manifest.load(self.storage)
            complete = is_complete(self.storage)
        except (PermissionError, FileNotFoundError, OSError) as e:
            raise UsageError(f"cannot read output {self.storage.describe()}: {type(e).__name__}: {e}") from e
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
                return None
        manifest = existing or Manifest(metadata=dict(metadata), inputs=sorted(config.inputs))
        manifest.shards = len(shards)
        manifest.complete = False
        try:
            manifest.save(self.storage)  # also proves the output is writable, before GPUs spin up
        except (PermissionError, FileNotFoundError, OSError) as e:
            raise UsageError(f"cannot write to output {self.storage.describe()}: {type(e).__name__}: {e}") from e
        return manifest

    def clear(self) -> None:
        """Remove what e5-embed wrote (data files, rejects, manifest, marker); nothing else."""
        fs = self.storage.fs
        for path in self._data_files() + [self.storage.join(REJECTS_DIR), self.storage.join(SUCCESS),
                                          self.storage.join(MANIFEST)]:
            self.storage.delete(path)
        logger.info("--overwrite: cleared %s", self.storage.describe())
        fs.invalidate_cache()

    def _data_files(self, folder: str = "") -> list[str]:
        fs = self.storage.fs
        pattern = self.storage.join(folder, "part-*.parquet") if folder else self.storage.join("part-*.parquet")
        try:
            return sorted(fs.glob(pattern))
        except FileNotFoundError:
            return []

    def file_coverages(self) -> list[coverage.Ranges]:
        """Coverage from the footer of every data and rejects file (footers only, in parallel)."""
        files = self._data_files() + self._data_files(REJECTS_DIR)
        fs = self.storage.fs

        def read(path: str) -> coverage.Ranges:
            with fs.open(path, "rb") as f:
                meta = pq.read_schema(f).metadata or {}
            return coverage.decode(meta.get(schemas.COVERAGE_KEY))

        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(read, files))

    def done_ranges(self, shards: Sequence[Shard]) -> coverage.Ranges:
        paths = {s.path for s in shards}
        merged = coverage.merge(self.file_coverages())
        return {k: v for k, v in merged.items() if k in paths}

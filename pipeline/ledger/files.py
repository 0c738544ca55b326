"""What an output holds now: its data and rejects files (names, and footers when scanned), the
files retired from it (a published output's, left for older snapshots), and part files beside them
that e5-embed did not write. One question: "what is in the output?"

Nothing here changes the output but local temp files a crash left (``remove_temp_files``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from pipeline.errors import TransientError, step_failed
from pipeline.io import coverage, schemas
from pipeline.io.counters import Counters
from pipeline.io.sink import REJECTS_DIR
from pipeline.io.storage import Storage
from pipeline.ledger.identity import PRODUCER
from pipeline.ledger.shard_log import SHARDS_DIR

logger = logging.getLogger(__name__)


class OutputFiles:
    """The output's files as they are listed now; ``foreign``: what the last scan found that
    e5-embed did not write; ``retired``: files the output no longer holds (never listed as its)."""

    def __init__(self, storage: Storage, retired: Sequence[str] = ()):
        self.storage = storage
        self.retired: set[str] = set(retired)
        self.foreign: list[str] = []

    def names(self, folder: str = "") -> list[str]:
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
        listed = [(p, False) for p in self.names()] + [(p, True) for p in self.names(REJECTS_DIR)]

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

    def data_files(self) -> list[str]:
        """The output's data files (names only: no footer is read; retired ones are not the output's)."""
        return self.names()

    def listed_files(self) -> frozenset[str]:
        """The data and rejects files there now (names only: no footer is read)."""
        return frozenset(self.names()) | frozenset(self.names(REJECTS_DIR))

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

    def files_digest(self, paths: Sequence[str]) -> str:
        """A digest of the output's file names (relative to it): what a proof was made over."""
        names = sorted(posixpath.relpath(p, self.storage.root) for p in paths)
        return hashlib.sha256("\n".join(names).encode()).hexdigest()[:32]


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

"""The proof behind ``_SUCCESS``: every row of every listed shard is in exactly one file.

For each listed input shard, the shard's record (written by the reader at the shard's end,
see :mod:`pipeline.ledger.shard_log`) must match the shard's fingerprint and give its row count;
the merged coverage of data and rejects files must then be exactly ``[0, rows)``, with no
overlap. Rows from sources that are not listed inputs are stale and also fail the proof.
A shard whose compressed stream broke off has an unknown number of rows after the
remainder: it fails the proof unless the run allows corrupt remainders.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.io import coverage
from pipeline.io.shard import Shard
from pipeline.ledger.shard_log import ShardRecord

SHOWN = 5  # shards named in a failure message


@dataclass(frozen=True)
class Proof:
    """What stands between the output and ``_SUCCESS``; ``ok`` when nothing does."""

    unread: list[str] = field(default_factory=list)  # never read to their end (at this fingerprint)
    missing: dict[str, int] = field(default_factory=dict)  # shard -> rows in [0, rows) not in any file
    extra: dict[str, int] = field(default_factory=dict)  # shard -> rows outside [0, rows) or of unlisted sources
    overlapping: dict[str, int] = field(default_factory=dict)  # shard -> rows in more than one file
    corrupt: list[ShardRecord] = field(default_factory=list)  # remainders not allowed by the run
    skipped_remainders: list[ShardRecord] = field(default_factory=list)  # remainders the run allowed

    @property
    def ok(self) -> bool:
        return not (self.unread or self.missing or self.extra or self.overlapping or self.corrupt)

    def complete_shards(self, shards: Sequence[Shard]) -> set[str]:
        bad = set(self.unread) | set(self.missing) | set(self.extra) | set(self.overlapping)
        bad |= {r.path for r in self.corrupt}
        return {s.path for s in shards} - bad

    def describe(self) -> str:
        parts = []

        def named(items: Iterable[str]) -> str:
            items = list(items)
            more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
            return ", ".join(items[:SHOWN]) + more

        if self.corrupt:
            parts.append(
                f"{len(self.corrupt)} shard(s) with an undecodable remainder (pass "
                f"--skip-corrupt-remainders to accept them): "
                + named(f"{r.path} after row {r.rows}" for r in self.corrupt)
            )
        if self.unread:
            parts.append(f"{len(self.unread)} shard(s) not read to their end: {named(self.unread)}")
        if self.missing:
            parts.append(
                f"{sum(self.missing.values())} input row(s) missing from the output: "
                + named(f"{p} ({n})" for p, n in self.missing.items())
            )
        if self.overlapping:
            parts.append(
                f"{sum(self.overlapping.values())} input row(s) in more than one file: "
                + named(f"{p} ({n})" for p, n in self.overlapping.items())
            )
        if self.extra:
            parts.append(
                f"{sum(self.extra.values())} output row(s) that are not current input rows: "
                + named(f"{p} ({n})" for p, n in self.extra.items())
            )
        return "; ".join(parts)


def prove(
    shards: Sequence[Shard],
    records: Mapping[str, ShardRecord],
    file_ranges: Sequence[coverage.Ranges],
    *,
    allow_remainders: bool,
) -> Proof:
    """Check the output's coverage (one ``Ranges`` per data/rejects file) against the shards."""
    merged = coverage.merge(file_ranges)
    per_source_total: dict[str, int] = {}
    for ranges in file_ranges:
        for source, spans in ranges.items():
            per_source_total[source] = per_source_total.get(source, 0) + sum(b - a for a, b in spans)
    proof = Proof()
    listed = {s.path for s in shards}
    for source, spans in merged.items():
        if source not in listed:
            proof.extra[source] = sum(b - a for a, b in spans)
    for shard in shards:
        spans = merged.get(shard.path, [])
        covered = sum(b - a for a, b in spans)
        if per_source_total.get(shard.path, 0) > covered:
            proof.overlapping[shard.path] = per_source_total[shard.path] - covered
        record = records.get(shard.path)
        if record is None or record.fingerprint != shard.fingerprint:
            proof.unread.append(shard.path)
            continue
        rows = record.rows
        inside = coverage.count(coverage.intersect({shard.path: spans}, {shard.path: [(0, rows)]}))
        if covered > inside:
            proof.extra[shard.path] = covered - inside
        if inside < rows:
            proof.missing[shard.path] = rows - inside
        if record.remainder is not None:
            (proof.skipped_remainders if allow_remainders else proof.corrupt).append(record)
    return proof


def fully_covered(shard: Shard, record: ShardRecord | None, ranges: coverage.Ranges) -> bool:
    """A shard that needs no reading: read to its end at this fingerprint, every row in a file."""
    if record is None or record.fingerprint != shard.fingerprint:
        return False
    spans = ranges.get(shard.path, [])
    return (record.rows == 0 and not spans) or spans == [(0, record.rows)]

"""``plan --update``: a dry run of ``--update``'s change detection against an existing output.

Read-only: the output's manifest and data file footers, the input listing, and records of the
shards an update would read. A shard is read by ``--update`` when it is new, or when rows of it in
the output were read at another version (its footers' ``e5_embed_versions``: it changed), and — by
the run's own rule (``OutputState.plan_reads``) — when it was not read to its end at its current
fingerprint (an empty shard that gained records, the rows a stopped or failed run left). Of the
records of those shards, the ones whose ``text_hash`` matches a row of the output's earlier state
of the changed shards get that row's vector; the rest are encoded. At most ``sample_records``
records are read (spread over the shards to read, each from its start) and the counts are scaled by
bytes, like the corpus estimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import UsageError
from pipeline.io import coverage
from pipeline.io.records import FieldSpec
from pipeline.io.shard import Shard
from pipeline.io.sources import ShardReader
from pipeline.io.storage import Storage
from pipeline.io.text_hash import text_hash
from pipeline.ledger.manifest import Manifest
from pipeline.ledger.output import OutputState, Work, fingerprint, stale_files
from pipeline.planning.estimate import CountingStorage


@dataclass
class UpdateEstimate:
    shards_to_read: int
    new_shards: int
    changed_shards: int
    vanished_shards: int
    unfinished_shards: int  # unchanged, but not all read: what a stopped or failed run left
    records_to_read: float  # estimated over the shards to read
    records_to_encode: float  # new or changed text
    records_carried: float  # an earlier row's vector matches by text_hash
    records_rejected: float  # read, and rejected again (no text to embed)
    sampled_records: int

    @property
    def encode_share(self) -> float:
        return self.records_to_encode / self.records_to_read if self.records_to_read else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "encode_share": round(self.encode_share, 4)}

    def describe(self) -> str:
        return (
            f"--update of the output: {self.shards_to_read} shard(s) to read ({self.new_shards} new, "
            f"{self.changed_shards} changed, {self.unfinished_shards} left unfinished by an earlier run), "
            f"{self.vanished_shards} vanished; ~{self.records_to_read:,.0f} "
            f"records read, ~{self.records_to_encode:,.0f} to encode ({self.encode_share:.1%}), "
            f"~{self.records_carried:,.0f} carried over (from {self.sampled_records} records read)"
        )


def estimate_update(
    output: str,
    shards: Sequence[Shard],
    *,
    storage_options: Mapping[str, Any],
    fields: FieldSpec,
    prefix: str,
    sample_records: int,
) -> UpdateEstimate:
    storage = Storage(output, storage_options)
    manifest = Manifest.load(storage)
    if manifest is None:
        raise UsageError(f"plan --update: {output} is not an e5-embed output (no _manifest.json)")
    state = OutputState(storage, retired=manifest.retired_files)
    files = state.files.scan()
    current = {s.path: s.version_key for s in shards}
    stale = stale_files(files, current)
    known = {e["path"]: e for e in manifest.input_shards}
    changed = {src for _, sources in stale for src in sources if src in current}
    changed |= {s.path for s in shards if s.path in known and fingerprint(known[s.path]) != s.fingerprint}
    # the run's own rule (OutputState.plan_reads): every shard not read to its end at this fingerprint
    # with all its rows in files, skipping the rows that are: a shard that was empty and gained records,
    # and the rows a stopped or failed run left, are read as the run will read them
    work = Work(manifest=manifest, stale=stale)
    state.plan_reads(work, shards, files)
    to_read = work.shards
    unfinished = sum(1 for s in to_read if s.path in known and s.path not in changed)
    vanished = len(set(known) - set(current))
    pool: set[bytes] = set()
    for f, sources in stale:
        if f.is_rejects:
            continue
        with storage.open(f.path) as fh:
            table = pq.read_table(fh, columns=["source", "text_hash"])
        table = table.filter(pc.is_in(table["source"], value_set=pa.array(list(sources), pa.string())))
        pool.update(h for h in table["text_hash"].to_pylist() if h is not None)
    per_shard = max(1, sample_records // max(1, len(to_read)))
    read_total = encode_total = rejected_total = 0.0
    sampled = 0
    for shard in to_read:
        skip = work.skip.get(shard.path, [])
        rows = matched = rejected = 0
        last_row = -1
        counting = CountingStorage(Storage(shard.uri, storage_options))
        finished = True
        for record in ShardReader(counting, shard, fields, skip):
            if rows >= per_shard:
                finished = False
                break
            rows += 1
            last_row = record["row"]
            if record["reject_reason"] is not None:
                rejected += 1
                continue
            title = (record.get("title") or "") if fields.title_apart else None
            matched += text_hash(prefix, record["text"], title) in pool
        if finished or not counting.read_bytes or not rows:
            scale = 1.0
        else:  # a shard read in part: its rows (done ones too) per stored byte, less the rows already done
            done = coverage.count({shard.path: skip})
            seen_done = coverage.count(coverage.intersect({shard.path: skip}, {shard.path: [(0, last_row + 1)]}))
            shard_rows = (last_row + 1) * shard.size / counting.read_bytes
            scale = max(1.0, (shard_rows - done) / max(1, last_row + 1 - seen_done))
        sampled += rows
        read_total += rows * scale
        encode_total += (rows - matched - rejected) * scale
        rejected_total += rejected * scale
    return UpdateEstimate(
        shards_to_read=len(to_read),
        new_shards=sum(1 for s in to_read if s.path not in known),
        changed_shards=sum(1 for s in to_read if s.path in changed),
        unfinished_shards=unfinished,
        vanished_shards=vanished,
        records_to_read=read_total,
        records_to_encode=encode_total,
        records_carried=read_total - encode_total - rejected_total,
        records_rejected=rejected_total,
        sampled_records=sampled,
    )

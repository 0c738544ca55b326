"""``plan --update``: a dry run of ``--update``'s change detection against an existing output.

Read-only: the output's manifest and data file footers, the input listing, and records of the
shards an update would read. A shard is read by ``--update`` when it is new, or when rows of it in
the output were read at another version (its footers' ``e5_embed_versions``: it changed). Of the
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
from pipeline.io.listing import Shard
from pipeline.io.records import FieldSpec
from pipeline.io.sources import ShardReader
from pipeline.io.storage import Storage
from pipeline.io.text_hash import text_hash
from pipeline.ledger.files import OutputFiles
from pipeline.ledger.manifest import Manifest
from pipeline.ledger.output import stale_files
from pipeline.planning.estimate import CountingStorage


@dataclass
class UpdateEstimate:
    shards_to_read: int
    new_shards: int
    changed_shards: int
    vanished_shards: int
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
            f"{self.changed_shards} changed), {self.vanished_shards} vanished; ~{self.records_to_read:,.0f} "
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
    files = OutputFiles(storage, retired=manifest.retired_files).scan()
    current = {s.path: s.version_key for s in shards}
    stale = stale_files(files, current)
    changed = {src for _, sources in stale for src in sources if src in current}
    known = {e["path"] for e in manifest.input_shards}
    to_read = [s for s in shards if s.path not in known or s.path in changed]
    vanished = len(known - set(current))
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
        rows = matched = rejected = 0
        counting = CountingStorage(Storage(shard.uri, storage_options))
        finished = True
        for record in ShardReader(counting, shard, fields):
            if rows >= per_shard:
                finished = False
                break
            rows += 1
            if record["reject_reason"] is not None:
                rejected += 1
                continue
            title = (record.get("title") or "") if fields.title_apart else None
            matched += text_hash(prefix, record["text"], title) in pool
        # a shard read in part: its records scaled by the stored bytes the reader consumed
        scale = 1.0 if finished or not counting.read_bytes else max(1.0, shard.size / counting.read_bytes)
        sampled += rows
        read_total += rows * scale
        encode_total += (rows - matched - rejected) * scale
        rejected_total += rejected * scale
    return UpdateEstimate(
        shards_to_read=len(to_read),
        new_shards=sum(1 for s in to_read if s.path not in known),
        changed_shards=sum(1 for s in to_read if s.path in changed),
        vanished_shards=vanished,
        records_to_read=read_total,
        records_to_encode=encode_total,
        records_carried=read_total - encode_total - rejected_total,
        records_rejected=rejected_total,
        sampled_records=sampled,
    )

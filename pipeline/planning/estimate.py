"""Cost before spending: what a corpus holds, from a bounded sample, and what embedding it takes.

``e5-embed plan --input URI`` lists the shards (sizes only), reads a bounded number of records
spread over up to ``sample_shards`` of them (each from its start; ``sample_records / shards``
records of each are kept), tokenizes them as the job would, and scales up by bytes: records per
byte is measured per (format, compression) class on the stored (compressed) bytes the reader
consumed, reading on to the end of the last chunk it fetched. With a plan on GPUs it adds
GPU-hours and wall time at the profile's tokens/s per GPU (``gpu_tokens_per_s`` in the scheduler
profiles, scaled to the model's size), and cost at ``--gpu-hour-price``. An estimate, said as
one: it assumes the sampled shards are typical.
"""

from __future__ import annotations

import copy
import io
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pipeline.errors import UsageError
from pipeline.io.records import FieldSpec
from pipeline.io.shard import Shard
from pipeline.io.sources import ShardReader
from pipeline.io.storage import Storage
from pipeline.planning.calibration import RateSource, padding_share
from pipeline.stages.chunk_tokenize import ChunkTokenizeStage
from pipeline.stages.chunking import ChunkSettings
from pipeline.stages.embedder import records_table
from pipeline.stages.model import ModelSource


@dataclass
class CorpusEstimate:
    shards: int
    bytes: int
    sampled_shards: int
    sampled_records: int
    records: float  # estimated records in the corpus
    rejected_share: float
    mean_tokens: float  # per record, whole text, prefix and special tokens included
    truncated_share: float  # records longer than max_length
    tokens_embedded: float  # what the GPUs will see (truncated, or every window)
    windows_per_record: float | None = None  # with --chunk-tokens
    records_per_byte: dict[str, float] = field(default_factory=dict)
    gpu_hours: float | None = None
    wall_hours: float | None = None
    cost: float | None = None
    rate_tokens_per_s: float | None = None  # the cluster's expected rate
    rate_source: str | None = None  # where the rate comes from (measured, a run, or a profile guess)
    wall_hours_range: tuple[float, float] | None = None  # from the measured spread
    gpu_hours_range: tuple[float, float] | None = None
    cost_range: tuple[float, float] | None = None
    padding_share: float | None = None  # padded token slots holding no token, under the plan's batching
    encode_seconds: float | None = None  # the encoders' time for the tokens to embed
    update: dict[str, Any] | None = None  # plan --update: what the update would read, encode and carry
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        lines = [
            f"corpus: {self.shards} shard(s), {self.bytes / 1e9:.2f} GB; sampled {self.sampled_records} record(s) "
            f"from {self.sampled_shards} shard(s)",
            f"  ~{self.records:,.0f} records, {self.mean_tokens:.0f} tokens each on average, "
            f"{self.truncated_share:.1%} longer than max-length, {self.rejected_share:.2%} rejected",
        ]
        if self.windows_per_record is not None:
            lines.append(f"  --chunk-tokens: {self.windows_per_record:.2f} windows per record")
        lines.append(f"  ~{self.tokens_embedded:,.0f} tokens to embed")
        if self.padding_share is not None:
            lines.append(f"  {self.padding_share:.1%} of the encoder's token slots padding under the plan's batching")
        if self.wall_hours is not None:
            low, high = self.wall_hours_range or (self.wall_hours, self.wall_hours)
            lines.append(
                f"  ~{self.wall_hours:,.3g} h of encoding ({low:,.3g}-{high:,.3g} h) at {self.rate_tokens_per_s:,.0f} "
                f"tokens/s for the cluster"
            )
        if self.gpu_hours is not None:
            low, high = self.gpu_hours_range or (self.gpu_hours, self.gpu_hours)
            cost = ""
            if self.cost is not None:
                c_low, c_high = self.cost_range or (self.cost, self.cost)
                cost = f", ~{self.cost:,.2f} ({c_low:,.2f}-{c_high:,.2f}) at the given GPU-hour price"
            lines.append(f"  ~{self.gpu_hours:,.3g} GPU-hours ({low:,.3g}-{high:,.3g}){cost}")
        if self.rate_source:
            lines.append(f"  rate: {self.rate_source}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


class CountingStorage:
    """A Storage whose opened files count the bytes read from it."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self.read_bytes = 0

    def open(self, path: str, mode: str = "rb"):
        return _Counted(self.storage.open(path, mode), self)

    def __getattr__(self, name: str):
        return getattr(self.storage, name)


class _Counted(io.RawIOBase):
    def __init__(self, f, owner: CountingStorage):
        self.f, self.owner = f, owner

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.owner.read_bytes += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self.f.seekable()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()

    def close(self) -> None:
        self.f.close()
        super().close()


def pick_spread(shards: Sequence[Shard], n: int) -> list[Shard]:
    """Up to ``n`` shards evenly spread over the listing (first and last included)."""
    if len(shards) <= n:
        return list(shards)
    idx = np.unique(np.linspace(0, len(shards) - 1, n).round().astype(int))
    return [shards[i] for i in idx]


def estimate_corpus(
    shards: Sequence[Shard],
    *,
    storage_options: Mapping[str, Any],
    fields: FieldSpec,
    model: ModelSource,
    prefix: str,
    max_length: int,
    chunk: ChunkSettings | None = None,
    sample_shards: int = 16,
    sample_records: int = 5000,
    batching: tuple[int, int, int] | None = None,
    keep_texts: list[str] | None = None,
) -> CorpusEstimate:
    """Records, tokens, truncation and windows of the corpus, from a bounded sample. ``batching``
    (micro-batch rows, rows per encode call, pad multiple): also the padding share under it.
    ``keep_texts``: filled with the sampled passages (a calibration runs on them)."""
    picked = pick_spread(shards, sample_shards)
    per_shard = max(1, sample_records // max(1, len(picked)))
    texts: list[str] = []
    titles: list[str | None] = []
    rejected = 0
    read: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # class -> [records, bytes]
    for shard in picked:
        counting = CountingStorage(Storage(shard.uri, storage_options))
        n, used, fetched = 0, shard.size, 0
        for record in ShardReader(counting, shard, fields):
            if n >= per_shard and counting.read_bytes != fetched:
                # the reader just fetched more: the n records so far lay within the bytes fetched before
                used = fetched
                break
            fetched = counting.read_bytes
            n += 1
            if n > per_shard:
                continue  # counted only: reading on to the end of what was already fetched
            if record["reject_reason"] is None:
                texts.append(record["text"])
                titles.append(record.get("title"))
            else:
                rejected += 1
        if used:
            key = f"{shard.format}/{shard.compression or 'none'}"
            read[key][0] += n
            read[key][1] += used
    rates = {k: r / b for k, (r, b) in read.items() if b}
    fallback = sum(r for r, _ in read.values()) / max(1.0, sum(b for _, b in read.values()))
    records = sum(s.size * rates.get(f"{s.format}/{s.compression or 'none'}", fallback) for s in shards)
    sampled = len(texts) + rejected  # the records kept for tokenizing (n counts more, for the rate)
    estimate = CorpusEstimate(
        shards=len(shards),
        bytes=sum(s.size for s in shards),
        sampled_shards=len(picked),
        sampled_records=sampled,
        records=records,
        rejected_share=rejected / sampled if sampled else 0.0,
        mean_tokens=0.0,
        truncated_share=0.0,
        tokens_embedded=0.0,
        records_per_byte={k: round(v, 8) for k, v in rates.items()},
    )
    if not texts:
        estimate.notes.append("no embeddable record in the sample")
        return estimate
    backend = copy.deepcopy(model.load_tokenizer())
    backend.no_truncation()
    backend.no_padding()
    lengths = np.asarray([len(e.ids) for e in backend.encode_batch([prefix + t for t in texts])])
    good_share = len(texts) / sampled
    estimate.mean_tokens = float(lengths.mean())
    estimate.truncated_share = float((lengths > max_length).mean())
    if keep_texts is not None:
        keep_texts.extend(texts)
    if chunk is None:
        per_record = float(np.minimum(lengths, max_length).mean())
        encoded = np.minimum(lengths, max_length)
    else:
        out = ChunkTokenizeStage(model=model, prefix=prefix, chunk=chunk)(records_table(texts, titles=titles))
        windows = out["n_tokens"].to_pylist()
        estimate.windows_per_record = float(np.mean([len(w or []) for w in windows]))
        per_record = float(np.mean([sum(w or []) for w in windows]))
        encoded = np.asarray([n for w in windows for n in (w or [])])
    if batching is not None and len(encoded):
        estimate.padding_share = round(padding_share(encoded, *batching), 4)
    estimate.tokens_embedded = records * good_share * per_record
    if len(picked) < len(shards):
        estimate.notes.append(
            f"scaled from {len(picked)} of {len(shards)} shards by bytes; assumes the sampled shards are typical"
        )
    return estimate


def add_cost(
    estimate: CorpusEstimate,
    *,
    encoders: float,
    rate: RateSource | None,
    on_gpu: bool = True,
    gpu_hour_price: float | None = None,
    calibrated_padding: float | None = None,
) -> CorpusEstimate:
    """Encoding time for ``encoders`` (GPUs, or CPU encode actors) at ``rate`` each; GPU-hours and
    cost at the price on GPUs; ranges from the rate's measured spread. A calibrated rate counts real
    tokens under the calibration corpus's padding: it is carried over to this corpus's padding
    share (the encoder's work is its token slots, padded or not)."""
    if rate is not None and rate.measured and not (math.isfinite(rate.tokens_per_s) and rate.tokens_per_s > 0):
        raise UsageError(f"the measured rate {rate.tokens_per_s!r} tokens/s ({rate.source}) cannot plan a run")
    if encoders <= 0 or rate is None or not rate.tokens_per_s > 0:
        estimate.notes.append("no encoder rate for this plan: no time or cost estimate")
        return estimate
    per_encoder = rate.tokens_per_s
    if calibrated_padding is not None and estimate.padding_share is not None and calibrated_padding < 1:
        per_encoder *= (1 - estimate.padding_share) / (1 - calibrated_padding)
        estimate.notes.append(
            f"the calibrated rate is carried over from its sample's padding share ({calibrated_padding:.1%}) to "
            f"this corpus's ({estimate.padding_share:.1%})"
        )
    estimate.rate_tokens_per_s = encoders * per_encoder
    estimate.rate_source = rate.source
    estimate.encode_seconds = estimate.tokens_embedded / estimate.rate_tokens_per_s
    estimate.wall_hours = estimate.encode_seconds / 3600
    spread = min(rate.spread, 0.9)
    estimate.wall_hours_range = (estimate.wall_hours / (1 + spread), estimate.wall_hours / (1 - spread))
    if on_gpu:
        estimate.gpu_hours = estimate.wall_hours * encoders
        estimate.gpu_hours_range = tuple(h * encoders for h in estimate.wall_hours_range)
        if gpu_hour_price is not None:
            estimate.cost = estimate.gpu_hours * gpu_hour_price
            estimate.cost_range = tuple(h * gpu_hour_price for h in estimate.gpu_hours_range)
    if not rate.measured:
        estimate.notes.append("the rate is a profile's guess: calibrate before budgeting on it (--calibrate)")
    return estimate

"""The vectors half of ``e5-embed verify``: ``N`` rows drawn uniformly (seeded) from the output's
data files; each one's source row read again where the output recorded it (source, row, the
shard's version), its text fingerprint and id compared, its vector recomputed by the model card's
algorithm (``card``) and compared with the stored one.

Two measures, both reported: the cosine against a threshold from the output's compute dtype, and
the distance in units of the spread between the sample's own texts (on random weights different
texts already reach cosine 0.999+, so a cosine threshold alone could not fail there).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.formats import detect_format
from pipeline.io.layout import Layout
from pipeline.io.listing import current_fingerprint
from pipeline.io.records import FieldSpec
from pipeline.io.shard import Shard
from pipeline.io.sources import ShardReader
from pipeline.io.storage import Storage
from pipeline.io.text_hash import text_hash
from pipeline.ledger.manifest import Manifest
from pipeline.verify.card import card_embeddings
from pipeline.verify.coverage import DataFile

logger = logging.getLogger(__name__)

# Cosine below which a recomputed vector is a defect, by the output's compute dtype. float32: the
# same arithmetic up to summation order (measured >= 0.999999 on CPU); bf16/fp16: the H200's
# measured parity on real weights is a min cosine of 0.99992 (docs/benchmarks.md), so 0.999 leaves
# 12x that distance while a wrong record's vector (cosine ~0.1-0.9 on real weights) fails it.
THRESHOLDS = {"float32": 0.9999, "bfloat16": 0.999, "float16": 0.999}
SPREAD_TOLERANCE = 0.1  # distance over the spread between texts (e5tools.parity's tolerance)


@dataclass
class VectorReport:
    sampled: int = 0
    checked: int = 0
    changed_since: int = 0  # source rows whose shard changed since the run: not compared
    threshold: float = 0.0
    cosines: list[float] = field(default_factory=list)
    spread: float | None = None
    worst_spread_error: float | None = None
    defects: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        c = np.asarray(self.cosines) if self.cosines else None
        pct = {} if c is None else {f"p{p}": round(float(np.percentile(c, p)), 6) for p in (1, 5, 50)}
        return {
            "sampled": self.sampled,
            "checked": self.checked,
            "changed_since_run": self.changed_since,
            "threshold": self.threshold,
            "min_cosine": None if c is None else round(float(c.min()), 6),
            **pct,
            "spread_between_texts": self.spread,
            "worst_error_in_spreads": self.worst_spread_error,
        }


@dataclass(frozen=True)
class Sampled:
    id: str
    source: str
    row: int
    vector: np.ndarray
    text_hash: bytes | None
    window: tuple[int, int] | None  # chunked outputs: the window's characters


def draw(storage: Storage, files: Sequence[DataFile], n: int, seed: int, layout: Layout) -> list[Sampled]:
    """``n`` rows drawn uniformly without replacement over every data file's rows (seeded)."""
    total = sum(f.rows for f in files)
    picks = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False)) if n else np.array([], int)
    out, start = [], 0
    columns = ["id", "source", "row", "embedding", "text_hash", *layout.span_columns]
    for f in files:
        mine = picks[(picks >= start) & (picks < start + f.rows)] - start
        start += f.rows
        if not len(mine):
            continue
        with storage.open(f.path) as fh:
            table = pq.read_table(fh, columns=columns)
        rows = table.take(pa.array(mine)).to_pylist()
        for r in rows:
            window = tuple(r[c] for c in layout.span_columns) or None
            out.append(
                Sampled(r["id"], r["source"], r["row"], np.asarray(r["embedding"], np.float32), r["text_hash"], window)
            )
    return out


def _shard(manifest: Manifest, entry: Mapping[str, Any], protocol: str) -> Shard:
    """The recorded shard, as the reader opens it."""
    path = entry["path"]
    fmt, compression = detect_format(path, manifest.metadata.get("input_format") or "auto")
    return Shard(path=path, relpath="", size=int(entry["size"]), format=fmt or "", compression=compression,
                 protocol=protocol, version=str(entry["version"]))  # fmt: skip


def recompute(
    manifest: Manifest,
    sampled: Sequence[Sampled],
    *,
    model_folder: str,
    protocol: str,
    storage_options: Mapping[str, Any],
    threshold: float | None = None,
) -> VectorReport:
    """Each sampled row's source read again and its vector recomputed by the card's algorithm."""
    meta = manifest.metadata
    layout = Layout.of_metadata(meta)
    compute = meta.get("compute_dtype") or "float32"
    report = VectorReport(sampled=len(sampled), threshold=threshold or THRESHOLDS.get(compute, 0.999))
    fields = FieldSpec(
        text_field=meta.get("text_field") or "text", id_field=meta.get("id_field") or "id",
        title_field=meta.get("title_field"), title_apart=layout.title_apart, prefix=meta.get("prefix") or "",
    )  # fmt: skip
    by_source: dict[str, list[Sampled]] = {}
    for s in sampled:
        by_source.setdefault(s.source, []).append(s)
    entries = {e["path"]: e for e in manifest.input_shards}
    texts, stored, names = [], [], []
    for source, rows in sorted(by_source.items()):
        if source not in entries:
            report.defects.append(f"rows of {source}, which the recorded listing does not hold (e.g. id {rows[0].id})")
            continue
        shard = _shard(manifest, entries[source], protocol)
        storage = Storage(shard.uri, storage_options)
        try:
            now = current_fingerprint(storage, shard.path)  # the reader's own check, asked before reading
        except FileNotFoundError:
            now = None
        if now != shard.fingerprint:
            report.changed_since += len(rows)  # the input moved on: not a wrong vector
            continue
        wanted: dict[int, list[Sampled]] = {}
        for s in rows:
            wanted.setdefault(s.row, []).append(s)
        total = int(entries[source].get("rows") or 0)
        for record in ShardReader(storage, shard, fields, _all_but(sorted(wanted), total)):
            for s in wanted.get(record["row"], ()):
                text = _model_input(record, s, fields, report)
                if text is not None:
                    texts.append(text)
                    stored.append(s.vector)
                    names.append(f"{source} row {s.row} (id {s.id})")
    if not texts:
        return report
    max_length = int((meta.get("chunking") or {}).get("tokens") or meta.get("max_length") or 512)
    fresh = card_embeddings(model_folder, texts, max_length)
    ours = np.stack(stored).astype(np.float32)
    ours /= np.maximum(np.linalg.norm(ours, axis=1, keepdims=True), 1e-12)
    cosines = (ours * fresh).sum(axis=1)
    report.checked, report.cosines = len(cosines), [float(c) for c in cosines]
    spread = _spread(fresh)
    report.spread = None if spread is None else round(spread, 6)
    errors = (1 - cosines) / spread if spread else np.zeros_like(cosines)
    report.worst_spread_error = round(float(errors.max()), 6) if spread else None
    for where, cos, err in zip(names, cosines, errors):
        if cos < report.threshold or (spread and err > SPREAD_TOLERANCE):
            report.defects.append(
                f"{where}: stored vector at cosine {cos:.6f} to the card's ({err:.3f} of the spread between texts)"
            )
    return report


def _model_input(record: Mapping[str, Any], s: Sampled, fields: FieldSpec, report: VectorReport) -> str | None:
    """What the model read for this stored row, from its record read again (None: a defect, said)."""
    where = f"{s.source} row {s.row} (id {s.id})"
    if record["reject_reason"] is not None:
        report.defects.append(f"{where} is embedded, but its record is rejected now ({record['reject_reason']})")
        return None
    if record["id"] != s.id:
        report.defects.append(f"{where}: the stored id is not the record's ({record['id']!r})")
        return None
    prefix = fields.prefix
    title = (record.get("title") or "") if fields.title_apart else None
    if s.text_hash is not None and text_hash(prefix, record["text"], title) != s.text_hash:
        report.defects.append(f"{where}: the stored text fingerprint is not the record's text's")
        return None
    if s.window is None:  # the whole record
        return prefix + record["text"]
    head = f"{prefix}{title} " if title else prefix  # a window: prefix + title + " " + its characters
    return head + record["text"][s.window[0] : s.window[1]]


def _all_but(rows: Sequence[int], total: int) -> list[tuple[int, int]]:
    """Row ranges to skip so that only ``rows`` are read."""
    skip, start = [], 0
    for r in rows:
        if r > start:
            skip.append((start, r))
        start = r + 1
    if total > start:
        skip.append((start, total))
    return skip


def _spread(vectors: np.ndarray) -> float | None:
    """The median cosine distance between different texts of the sample (None with fewer than two)."""
    if len(vectors) < 2:
        return None
    sims = vectors @ vectors.T
    upper = sims[np.triu_indices(len(vectors), k=1)]
    spread = float(np.median(1 - upper))
    return spread if spread > 0 else None

"""Which input rows an output file covers: compact per-source row ranges.

Every data and rejects file stores its coverage in its Parquet footer, and is
named by a digest of it. A rerun reads only footers to learn what is durably
done, and a retried write of the same rows lands on the same name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Ranges = dict[str, list[tuple[int, int]]]  # source -> sorted, disjoint [start, end)


def ranges_of(table: pa.Table) -> Ranges:
    """Coverage of a table with ``source`` and ``row`` columns (in chunked files, a record's first
    window stands for the record: a record twice in a file still shows as an overlap)."""
    if "chunk" in table.column_names:
        table = table.filter(pc.equal(table["chunk"], 0))
    if table.num_rows == 0:
        return {}
    order = pc.sort_indices(table, sort_keys=[("source", "ascending"), ("row", "ascending")])
    sources = table["source"].take(order).to_numpy(zero_copy_only=False)
    rows = table["row"].take(order).to_numpy()
    out: Ranges = {}
    breaks = np.flatnonzero((sources[1:] != sources[:-1]) | (rows[1:] != rows[:-1] + 1)) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(rows)]])
    for s, e in zip(starts, ends):
        out.setdefault(str(sources[s]), []).append((int(rows[s]), int(rows[e - 1]) + 1))
    return out


def merge(all_ranges: Iterable[Mapping[str, Sequence[Sequence[int]]]]) -> Ranges:
    """Union of several coverages, as sorted disjoint ranges."""
    collected: dict[str, list[tuple[int, int]]] = {}
    for ranges in all_ranges:
        for source, spans in ranges.items():
            collected.setdefault(source, []).extend((int(a), int(b)) for a, b in spans)
    out: Ranges = {}
    for source, spans in collected.items():
        spans.sort()
        merged: list[tuple[int, int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        out[source] = merged
    return out


def count(ranges: Mapping[str, Sequence[Sequence[int]]]) -> int:
    return sum(b - a for spans in ranges.values() for a, b in spans)


def overlap(ranges: Iterable[Mapping[str, Sequence[Sequence[int]]]]) -> int:
    """Rows covered more than once across the given coverages (0 means exactly-once)."""
    listed = list(ranges)
    return sum(count(r) for r in listed) - count(merge(listed))


def encode(ranges: Ranges) -> bytes:
    return json.dumps({k: [list(x) for x in v] for k, v in sorted(ranges.items())}, separators=(",", ":")).encode()


def decode(raw: bytes | None) -> Ranges:
    if not raw:
        return {}
    return {k: [(int(a), int(b)) for a, b in v] for k, v in json.loads(raw).items()}


def digest(ranges: Ranges, versions: Mapping[str, str] | None = None) -> str:
    """A file name's digest of the rows it covers (and of their sources' versions, when given)."""
    h = hashlib.sha1(encode(ranges))
    if versions:
        h.update(json.dumps(dict(versions), sort_keys=True).encode())
    return h.hexdigest()[:20]


def intersect(a: Mapping[str, Sequence[Sequence[int]]], b: Mapping[str, Sequence[Sequence[int]]]) -> Ranges:
    """Rows in both coverages."""
    out: Ranges = {}
    for source, spans in a.items():
        other = b.get(source, ())
        hits = [(max(x0, y0), min(x1, y1)) for x0, x1 in spans for y0, y1 in other if max(x0, y0) < min(x1, y1)]
        if hits:
            out[source] = merge([{source: hits}])[source]
    return out


def mask_outside(table: pa.Table, ranges: Mapping[str, Sequence[Sequence[int]]]) -> pa.Array:
    """Boolean mask: True for rows of ``table`` (source, row) not covered by ``ranges``."""
    sources = table["source"].to_numpy(zero_copy_only=False)
    rows = table["row"].to_numpy()
    keep = np.ones(len(rows), dtype=bool)
    for source, spans in ranges.items():
        here = sources == source
        if not spans or not here.any():
            continue
        starts = np.array([a for a, _ in spans])
        ends = np.array([b for _, b in spans])
        # spans are sorted and disjoint: the candidate is the last span starting at or before the row
        i = np.searchsorted(starts, rows[here], side="right") - 1
        covered = (i >= 0) & (rows[here] < ends[np.maximum(i, 0)])
        keep[np.flatnonzero(here)[covered]] = False
    return pa.array(keep)


def first_of_each_row(table: pa.Table) -> pa.Array:
    """Indices of the first occurrence of each (source, row) (each (source, row, chunk) in chunked
    files) in ``table``, in table order."""
    if table.num_rows == 0:
        return pa.array([], pa.int64())
    names = ["source", "row"] + (["chunk"] if "chunk" in table.column_names else [])
    keys = pa.table({**{n: table[n] for n in names}, "i": pa.array(np.arange(table.num_rows, dtype=np.int64))})
    firsts = keys.group_by(names, use_threads=False).aggregate([("i", "min")])
    return pa.array(np.sort(firsts["i_min"].to_numpy()))

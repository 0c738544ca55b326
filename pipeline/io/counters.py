"""The output's counters: one typed object that adds up and round-trips through file footers.

Every data/rejects file stores its counters in its Parquet footer; a write task returns the
counters of what it wrote; a run's and the output's totals are sums of these. The footer keeps
the original compact format (``rows`` plus ``tokens``/``truncated`` for data files,
``reject_kinds`` for rejects files), so outputs written before this type existed read the same.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


def reason_kind(reason: str) -> str:
    """A countable category for a reject reason ("invalid JSON: ... col 5" -> "invalid JSON")."""
    return re.sub(r"\d+", "N", reason.split(":", 1)[0]).strip()


@dataclass(kw_only=True)
class Counters:
    rows_written: int = 0  # embedded input records (data files)
    chunks: int = 0  # data rows: one per record, or one per window in chunked runs
    rows_rejected: int = 0  # rows in _rejects/
    tokens: int = 0  # tokens embedded, prefix and special tokens included
    truncated: int = 0  # embedded rows cut at --max-length
    data_files: int = 0
    reject_kinds: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: "Counters") -> "Counters":
        kinds = Counter(self.reject_kinds)
        kinds.update(other.reject_kinds)
        return Counters(
            rows_written=self.rows_written + other.rows_written,
            rows_rejected=self.rows_rejected + other.rows_rejected,
            chunks=self.chunks + other.chunks,
            tokens=self.tokens + other.tokens,
            truncated=self.truncated + other.truncated,
            data_files=self.data_files + other.data_files,
            reject_kinds=dict(kinds),
        )

    @classmethod
    def total(cls, parts: Iterable["Counters"]) -> "Counters":
        out = cls()
        for part in parts:
            out = out + part
        return out

    # ------------------------------------------------------------------ one file

    @classmethod
    def of_table(cls, table: pa.Table) -> "Counters":
        """The counters of one data table (``n_tokens``/``truncated``) or rejects table (``reason``)."""
        if "reason" in table.column_names:
            return cls(
                rows_rejected=table.num_rows,
                reject_kinds=dict(Counter(reason_kind(r) for r in table["reason"].to_pylist())),
            )
        firsts = pc.equal(table["chunk"], 0) if "chunk" in table.column_names else None  # one per record
        truncated = table["truncated"] if firsts is None else pc.and_(table["truncated"], firsts)
        return cls(
            rows_written=table.num_rows if firsts is None else int(pc.sum(firsts.cast(pa.int64())).as_py() or 0),
            chunks=table.num_rows,
            data_files=1 if table.num_rows else 0,
            tokens=int(pc.sum(table["n_tokens"]).as_py() or 0),
            truncated=int(pc.sum(truncated.cast(pa.int64())).as_py() or 0),
        )

    def footer(self) -> dict[str, Any]:
        """The footer format of one file."""
        if self.rows_rejected:
            return {"rows": self.rows_rejected, "reject_kinds": dict(self.reject_kinds)}
        out = {"rows": self.rows_written, "tokens": self.tokens, "truncated": self.truncated}
        if self.chunks != self.rows_written:  # chunked runs; else the original format
            out["chunks"] = self.chunks
        return out

    @classmethod
    def from_footer(cls, stats: Mapping[str, Any], *, is_rejects: bool) -> "Counters":
        rows = int(stats.get("rows", 0))
        if is_rejects:
            return cls(rows_rejected=rows, reject_kinds=dict(stats.get("reject_kinds", {})))
        return cls(
            rows_written=rows,
            chunks=int(stats.get("chunks", rows)),
            data_files=1,
            tokens=int(stats.get("tokens", 0)),
            truncated=int(stats.get("truncated", 0)),
        )

    # ------------------------------------------------------------------ records

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Counters":
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

"""How an output holds its rows, chosen once per job: ``TRUNCATE`` (one row per record, the text
cut at ``--max-length``) or ``CHUNK`` (``--chunk-tokens``: one row per window, every window of a
record). The layout supplies what depends on that choice, so no module branches on it: the
schemas (as the encoder emits rows and as the files hold them), whether the title stays apart from
the text (which the text hash then covers as its own part), a record's key in the data files and
which of its rows stands for it (a record is its first window), and the columns that say which
part of the text a row embeds. The tokenizer stage for a layout is the plan's
(``planning.plan.TOKENIZERS``); the text-hash scheme follows ``title_apart`` (``io.text_hash``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.io import schemas, text_hash


@dataclass(frozen=True)
class Layout:
    name: str  # "truncate" or "chunk"
    windowed: bool  # one row per window (the record's key plus ``chunk``)

    @property
    def records_per_batch_share(self) -> int:
        """A Ray batch holds this many times fewer records than the truncating layout's: a windowed
        record is a list of up to --max-chunks-per-record windows, kept within host memory."""
        return 8 if self.windowed else 1

    @property
    def title_apart(self) -> bool:
        """Every window gets the title: it is kept apart from the text (and hashed as its own part)."""
        return self.windowed

    @property
    def record_key(self) -> tuple[str, ...]:
        """The data files' columns that name one stored row."""
        return ("source", "row", "chunk") if self.windowed else ("source", "row")

    @property
    def first_row(self) -> tuple[str, int] | None:
        """(column, value) of the one row that stands for its record (its first window), or None
        when every row is a record."""
        return ("chunk", 0) if self.windowed else None

    @property
    def span_columns(self) -> tuple[str, ...]:
        """The columns saying which characters of the text a row embeds (none: the whole text)."""
        return ("char_start", "char_end") if self.windowed else ()

    @property
    def text_hash_scheme(self) -> str:
        """The fingerprint of what the model reads, as the output records it (``io.text_hash``)."""
        return text_hash.scheme(self.title_apart)

    def embedded_schema(self, dim: int, output_dtype: str = "float32") -> pa.Schema:
        """What the encode stage emits: a row per record (windows as lists when windowed)."""
        return (schemas.chunk_embedded_schema if self.windowed else schemas.embedded_schema)(dim, output_dtype)

    def output_schema(self, dim: int, output_dtype: str = "float32") -> pa.Schema:
        """The data files' columns (the output contract)."""
        return (schemas.chunk_output_schema if self.windowed else schemas.output_schema)(dim, output_dtype)

    @classmethod
    def of_rows(cls, columns: list[str]) -> Layout:
        """The layout of rows the encoder emitted, from their columns."""
        return CHUNK if "char_start" in columns else TRUNCATE

    @classmethod
    def of_metadata(cls, metadata: Mapping[str, Any]) -> Layout:
        """The layout an output was made with, from its recorded settings."""
        return cls.of_chunking(metadata.get("chunking"))

    @classmethod
    def of_chunking(cls, chunking: Any) -> Layout:
        """From the window settings (``--chunk-tokens`` and its companions, or their record): none, truncate."""
        return TRUNCATE if chunking is None else CHUNK


TRUNCATE = Layout("truncate", windowed=False)
CHUNK = Layout("chunk", windowed=True)

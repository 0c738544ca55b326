"""Explicit Arrow schemas for every stage boundary.

read ──RECORDS──▶ tokenize ──TOKENIZED──▶ encode ──embedded_schema(dim)──▶ sink
                                                 └─ data files / _rejects files

Chunked runs (``--chunk-tokens``) keep one row per input record through the pipeline, its
windows as lists (CHUNK_TOKENIZED, ``chunk_embedded_schema``); the sink writes one row per
window (``chunk_output_schema``), all windows of a record in one file.

Rejected records travel with the good ones (``reject_reason`` set, no text,
no tokens, no embedding) so the sink accounts for every input row.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.io.text_hash import TEXT_HASH_TYPE

METADATA_KEY = b"e5_embed"
COVERAGE_KEY = b"e5_embed_coverage"
STATS_KEY = b"e5_embed_stats"
VERSIONS_KEY = b"e5_embed_versions"  # {source: the shard's size:version when its rows were read}
PRODUCER = "e5-embed"  # every file this tool writes says so in its metadata; nothing else is touched
# the output format's version, in every file's metadata and the manifest (how older outputs are
# read: pipeline.ledger.compatibility)
FORMAT_VERSION = 1
FORMAT_VERSION_KEY = "format_version"

_KEY_FIELDS = [
    pa.field("id", pa.string()),
    pa.field("source", pa.string(), nullable=False),
    pa.field("row", pa.int64(), nullable=False),
    pa.field("reject_reason", pa.string()),
    pa.field("text_hash", TEXT_HASH_TYPE),  # of what the model reads (pipeline.io.text_hash); null if rejected
]

RECORDS = pa.schema(
    _KEY_FIELDS
    + [
        pa.field("text", pa.string()),
        pa.field("title", pa.string()),  # only in chunked runs (else the title is part of the text)
    ]
)

TOKENIZED = pa.schema(
    _KEY_FIELDS
    + [
        pa.field("input_ids", pa.list_(pa.int32())),
        pa.field("n_tokens", pa.int32()),
        pa.field("truncated", pa.bool_()),
    ]
)


# One row per record, one list item per window (in text order).
_WINDOW_FIELDS = [
    pa.field("char_start", pa.list_(pa.int64())),  # window start in the record's text (str index)
    pa.field("char_end", pa.list_(pa.int64())),
    pa.field("n_tokens", pa.list_(pa.int32())),  # the window's tokens, prefix/title/special included
    pa.field("truncated", pa.bool_()),  # windows past --max-chunks-per-record were cut off
]

CHUNK_TOKENIZED = pa.schema(_KEY_FIELDS + [pa.field("input_ids", pa.list_(pa.list_(pa.int32())))] + _WINDOW_FIELDS)


def embedding_type(dim: int, output_dtype: str = "float32") -> pa.DataType:
    value = pa.float16() if output_dtype == "float16" else pa.float32()
    return pa.list_(pa.field("item", value, nullable=False), dim)


def embedded_schema(dim: int, output_dtype: str = "float32") -> pa.Schema:
    """What the encode stage emits: tokens replaced by the embedding."""
    return pa.schema(
        _KEY_FIELDS
        + [
            pa.field("embedding", embedding_type(dim, output_dtype)),
            pa.field("n_tokens", pa.int32()),
            pa.field("truncated", pa.bool_()),
        ]
    )


def chunk_embedded_schema(dim: int, output_dtype: str = "float32") -> pa.Schema:
    """What the encode stage emits in chunked runs: one embedding per window."""
    return pa.schema(
        _KEY_FIELDS + [pa.field("embedding", pa.list_(embedding_type(dim, output_dtype)))] + _WINDOW_FIELDS
    )


def _output_fields(dim: int, output_dtype: str) -> list[pa.Field]:
    return [
        pa.field("id", pa.string(), nullable=False),
        pa.field("embedding", embedding_type(dim, output_dtype), nullable=False),
        pa.field("n_tokens", pa.int32(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("text_hash", TEXT_HASH_TYPE, nullable=False),  # pipeline.io.text_hash (chunked: the record's)
    ]


def output_schema(dim: int, output_dtype: str = "float32") -> pa.Schema:
    """The data files' columns (the output contract)."""
    return pa.schema(_output_fields(dim, output_dtype))


def chunk_output_schema(dim: int, output_dtype: str = "float32") -> pa.Schema:
    """The data files' columns in chunked runs: the output contract's, with the window after the id
    (one row per window; (id, chunk) is unique)."""
    base = _output_fields(dim, output_dtype)
    window = [
        pa.field("chunk", pa.int32(), nullable=False),  # 0-based, in text order
        pa.field("char_start", pa.int64(), nullable=False),
        pa.field("char_end", pa.int64(), nullable=False),
    ]
    return pa.schema(base[:1] + window + base[1:])


def keyed_table(batch: pa.Table, schema: pa.Schema, **columns: pa.Array) -> pa.Table:
    """A stage's output in ``schema``: each column from ``columns`` where given, else passed through
    from ``batch`` (the record's key columns: id, source, row, reject_reason, text_hash), so no stage
    lists them by hand."""
    return pa.Table.from_arrays([columns[n] if n in columns else batch[n] for n in schema.names], schema=schema)


REJECTS = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("id", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
    ]
)

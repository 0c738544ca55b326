"""What an output is made with: the settings every file and the manifest record (``e5_embed``
metadata), which of them make vectors interchangeable, and how a recorded value is read.

One question: "was this made like that?" (``OutputState.prepare``, the reuse pool, the table).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.errors import UsageError
from pipeline.io import schemas, text_hash
from pipeline.io.layout import Layout
from pipeline.io.storage import normalize_uri

# What makes two outputs' vectors interchangeable for rows of equal text_hash (--reuse-from):
# the model and how it is run; not where the records came from or how they were named. The
# compute dtype is the one the encoders resolved (bf16 on a GPU, float32 on CPU for "auto"), not
# the asked-for setting; the device class is recorded but does not count (docs/exactly-once.md).
VECTOR_KEYS = (
    "model",
    "model_sha",
    "prefix",
    "pooling",
    "normalized",
    "dim",
    "max_length",
    "compute_dtype",
    "output_dtype",
    "chunking",
    "text_hash",
)
# Settings an output is made with: it is never a mix of two of these.
IDENTITY_KEYS = (
    *VECTOR_KEYS,
    "revision",
    "text_field",
    "id_field",
    "title_field",
    "input_format",
    "inputs",
    "derived_ids",
)
PRODUCER = schemas.PRODUCER


def normalized_inputs(inputs: Sequence[str]) -> list[str]:
    return sorted({normalize_uri(i) for i in inputs})


def identity(metadata: Mapping[str, Any], key: str) -> Any:
    value = metadata.get(key)
    if key == "text_hash":  # the legacy scheme name, read as what it meant
        return text_hash.recorded_scheme(value, Layout.of_metadata(metadata).windowed)
    if key == "compute_dtype" and value is None:  # made before it was recorded: known only if asked for
        asked = metadata.get("dtype")
        return None if asked in (None, "auto") else asked
    return normalized_inputs(value or []) if key == "inputs" else value


def refuse_legacy_chunked(made: Mapping[str, Any], what: str) -> None:
    """A chunked output made with the first chunked text_hash (title NUL text): its fingerprints
    are ambiguous, so no row of it may be matched by text_hash again."""
    if text_hash.legacy_chunked(made.get("text_hash"), Layout.of_metadata(made).windowed):
        raise UsageError(
            f"{what} with the first chunked text_hash scheme ({text_hash.LEGACY_SCHEME!r}), under which a "
            "title and a text holding NUL characters can share a fingerprint with another record; its "
            "fingerprints cannot be trusted to match texts. Embed it again with --overwrite (or into another "
            "--output)"
        )

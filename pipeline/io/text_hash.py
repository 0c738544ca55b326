"""``text_hash``: a 128-bit fingerprint of exactly what the model reads for a record.

``blake2b(digest_size=16)`` over the UTF-8 bytes of the E5 prefix followed by the text (with the
title already joined to it, as the reader joins it). In chunked runs, where the title is kept
apart and repeated in every window, it is the prefix, the title, a NUL byte and the text: every
window of a record is a function of that and the chunk settings, so one fingerprint per record
stands for all of them. Downstream it can be recomputed from the input alone:

    hashlib.blake2b(("passage: " + text).encode(), digest_size=16).digest()

Two rows with equal ``text_hash`` under one model identity have the same vector, which is what
``--update`` and ``--reuse-from`` rely on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pyarrow as pa

TEXT_HASH_BYTES = 16
TEXT_HASH_TYPE = pa.binary(TEXT_HASH_BYTES)
SCHEME = "blake2b-128 of utf-8(prefix + text); chunked: prefix + title + NUL + text"


def text_hash(prefix: str, text: str, title: str | None = None) -> bytes:
    h = hashlib.blake2b(prefix.encode("utf-8"), digest_size=TEXT_HASH_BYTES)
    if title is not None:
        h.update(title.encode("utf-8"))
        h.update(b"\0")
    h.update(text.encode("utf-8"))
    return h.digest()


def text_hashes(prefix: str, texts: Sequence[str | None], titles: Sequence[str | None] | None = None) -> pa.Array:
    """One fingerprint per text (null where the text is null: a rejected record)."""
    if titles is None:
        values = [None if t is None else text_hash(prefix, t) for t in texts]
    else:
        values = [None if t is None else text_hash(prefix, t, title) for t, title in zip(texts, titles)]
    return pa.array(values, TEXT_HASH_TYPE)

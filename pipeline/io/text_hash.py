"""``text_hash``: a 128-bit fingerprint of exactly what the model reads for a record.

Truncating runs: ``blake2b(digest_size=16)`` over the UTF-8 bytes of the E5 prefix followed by the
text (with the title already joined to it, as the reader joins it). The prefix is fixed by the
output's identity, so equal fingerprints mean equal strings, hence equal tokens. Downstream it can
be recomputed from the input alone:

    hashlib.blake2b(("passage: " + text).encode(), digest_size=16).digest()

Chunked runs (``--chunk-tokens``) keep the title apart and repeat it in every window, so the
fingerprint covers three strings: each part is length-prefixed (8 bytes, big-endian, then its UTF-8
bytes), so no two (prefix, title, text) triples share an encoding, whatever characters they hold.
The first chunked scheme joined title and text with a NUL byte, and a NUL inside either made two
different records (``"data"``/``"base\\0systems"`` and ``"data\\0base"``/``"systems"``) share a
fingerprint; outputs made with it are refused by name (:func:`legacy_chunked`).

Control characters (NUL among them) reach the tokenizer as read; BERT's normalizer drops them.
The fingerprint covers the string as read, so two texts that differ only in such characters get
different fingerprints: at worst a record is encoded again, never given another record's vector.

Two rows with equal ``text_hash`` under one model identity have the same vector, which is what
``--update`` and ``--reuse-from`` rely on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pyarrow as pa

TEXT_HASH_BYTES = 16
TEXT_HASH_TYPE = pa.binary(TEXT_HASH_BYTES)
SCHEME = "blake2b-128 of utf-8(prefix + text)"
CHUNKED_SCHEME = "blake2b-128 of length-prefixed utf-8 parts (prefix, title, text); v2"
# what every output recorded before the schemes were told apart (both modes under one name)
LEGACY_SCHEME = "blake2b-128 of utf-8(prefix + text); chunked: prefix + title + NUL + text"


def scheme(chunked: bool) -> str:
    return CHUNKED_SCHEME if chunked else SCHEME


def recorded_scheme(value: str | None, chunked: bool) -> str | None:
    """The scheme an output recorded, under its current name: the legacy name meant today's
    truncating scheme (the same function) in a truncating output, and the ambiguous NUL join in a
    chunked one (kept as it is, so it never equals :data:`CHUNKED_SCHEME`)."""
    if value == LEGACY_SCHEME and not chunked:
        return SCHEME
    return value


def legacy_chunked(value: str | None, chunked: bool) -> bool:
    return chunked and value == LEGACY_SCHEME


def _part(h, value: str) -> None:
    raw = value.encode("utf-8")
    h.update(len(raw).to_bytes(8, "big"))
    h.update(raw)


def text_hash(prefix: str, text: str, title: str | None = None) -> bytes:
    """``title=None``: a truncating run's fingerprint; a title (``""`` for none): a chunked run's."""
    if title is None:
        h = hashlib.blake2b(prefix.encode("utf-8"), digest_size=TEXT_HASH_BYTES)
        h.update(text.encode("utf-8"))
        return h.digest()
    h = hashlib.blake2b(digest_size=TEXT_HASH_BYTES)
    for part in (prefix, title, text):
        _part(h, part)
    return h.digest()


def text_hashes(prefix: str, texts: Sequence[str | None], titles: Sequence[str | None] | None = None) -> pa.Array:
    """One fingerprint per text (null where the text is null: a rejected record)."""
    if titles is None:
        values = [None if t is None else text_hash(prefix, t) for t in texts]
    else:
        values = [None if t is None else text_hash(prefix, t, title or "") for t, title in zip(texts, titles)]
    return pa.array(values, TEXT_HASH_TYPE)

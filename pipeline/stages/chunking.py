"""Long documents as passages: where a record's token windows start and end.

Pure numpy over one record's token offsets; the tokenize stage calls it after tokenizing the
record once. A window is a run of whole words: it ends where whitespace separates two tokens
(else, in a window with no such place in its second half, where the tokenizer's pre-tokenizer
starts a new word, e.g. between CJK characters or at punctuation; only a single word longer
than a window is cut inside). Because BERT's normalizer is per character and its
pre-tokenizer splits at whitespace and punctuation, ``text[char_start:char_end]`` of a window
tokenizes to exactly the window's tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import UsageError

# Overlap between neighbouring windows, in tokens. A query whose answer straddles a window
# boundary still finds one window holding most of it; at 512-token windows 32 tokens (one or
# two sentences) cost ~7% more tokens (docs/benchmarks.md: the long-document retrieval check).
DEFAULT_OVERLAP = 32
# The most windows one record yields; beyond it the record is cut (its rows say truncated).
# 256 windows of 512 tokens is ~130k tokens, a long book.
DEFAULT_MAX_CHUNKS = 256
MIN_TEXT_TOKENS = 8  # a window must leave at least this many tokens for the text itself


@dataclass(frozen=True, kw_only=True)
class ChunkSettings:
    """``--chunk-tokens``/``--chunk-overlap``/``--max-chunks-per-record``; identity settings."""

    tokens: int  # window size, special tokens, prefix and title included
    overlap: int = DEFAULT_OVERLAP  # tokens repeated between neighbours (at most)
    max_chunks: int = DEFAULT_MAX_CHUNKS  # windows per record; more are cut off (truncated)

    def __post_init__(self) -> None:
        if self.tokens < 16:
            raise UsageError(f"chunk tokens must be >= 16; got {self.tokens}")
        if not 0 <= self.overlap <= self.tokens // 2:
            raise UsageError(f"chunk overlap must be in [0, {self.tokens // 2}] (half a window); got {self.overlap}")
        if self.max_chunks < 1:
            raise UsageError(f"max chunks per record must be >= 1; got {self.max_chunks}")

    def metadata(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "overlap": self.overlap, "max_chunks": self.max_chunks}


def windows(
    starts: np.ndarray,
    ends: np.ndarray,
    *,
    budget: int,
    overlap: int,
    max_chunks: int,
    word_starts: Callable[[], np.ndarray],
) -> tuple[np.ndarray, bool]:
    """Token windows ``[(first, end), ...]`` (an (k, 2) int array) and whether ``max_chunks`` cut
    the record short.

    ``starts``/``ends`` are the tokens' character offsets; ``budget`` is how many text tokens one
    window holds; ``word_starts()`` (called only when needed) gives the indices of tokens that
    begin a pre-tokenizer word.
    """
    n = len(starts)
    if n == 0:
        return np.zeros((0, 2), dtype=np.int64), False
    # token i begins after whitespace (or characters the tokenizer drops)
    spaced = np.flatnonzero(starts[1:] > ends[:-1]) + 1
    words: np.ndarray | None = None
    out: list[tuple[int, int]] = []
    first = 0
    while True:
        if n - first <= budget:
            out.append((first, n))
            return np.asarray(out, dtype=np.int64), False
        limit = first + budget
        end = _last_in(spaced, first + budget // 2, limit)
        if end is None:
            if words is None:
                words = word_starts()
            end = _last_in(words, first, limit)
        if end is None:
            end = limit  # one word longer than a window
        out.append((first, end))
        if len(out) == max_chunks:
            return np.asarray(out, dtype=np.int64), True
        nxt = _first_at_least(spaced, end - overlap) if overlap else None
        first = nxt if nxt is not None and first < nxt < end else end


def _last_in(candidates: np.ndarray, low: int, high: int) -> int | None:
    """The largest candidate in (low, high], or None."""
    i = int(np.searchsorted(candidates, high, side="right")) - 1
    if i >= 0 and candidates[i] > low:
        return int(candidates[i])
    return None


def _first_at_least(candidates: np.ndarray, low: int) -> int | None:
    i = int(np.searchsorted(candidates, low, side="left"))
    return int(candidates[i]) if i < len(candidates) else None

"""Window placement over token offsets: whole words, bounded size and overlap, a cap."""

import numpy as np
import pytest

from pipeline.stages.chunking import ChunkSettings, windows

pytestmark = pytest.mark.unit


def offsets_of(words: list[int], gap: int = 1):
    """Token offsets of words made of ``words[i]`` tokens (word pieces touch, words are spaced)."""
    starts, ends, word_starts = [], [], []
    pos = 0
    for size in words:
        word_starts.append(len(starts))
        for _ in range(size):
            starts.append(pos)
            ends.append(pos + 2)
            pos += 2
        pos += gap
    return np.array(starts), np.array(ends), np.array(word_starts[1:])


def check(spans, starts, ends, budget, overlap):
    assert spans[0][0] == 0 and spans[-1][1] == len(starts)  # from the first token to the last
    for (a, b), (c, _) in zip(spans[:-1], spans[1:]):
        assert a < c <= b and b - c <= overlap  # progress, no gap, overlap bounded
    for a, b in spans:
        assert 0 < b - a <= budget


@pytest.mark.parametrize("overlap", [0, 5, 16])
def test_windows_cover_every_token_at_word_boundaries(overlap):
    rng = np.random.default_rng(0)
    starts, ends, word_starts = offsets_of(rng.integers(1, 5, size=400).tolist())
    spans, capped = windows(starts, ends, budget=40, overlap=overlap, max_chunks=1000, word_starts=lambda: word_starts)
    assert not capped
    check(spans.tolist(), starts, ends, 40, overlap)
    spaced = set((np.flatnonzero(starts[1:] > ends[:-1]) + 1).tolist())
    assert all(b in spaced or b == len(starts) for _, b in spans.tolist())  # never inside a word
    assert all(a in spaced or a == 0 for a, _ in spans.tolist())


def test_short_text_is_one_window_and_empty_is_none():
    starts, ends, ws = offsets_of([1, 2, 3])
    assert windows(starts, ends, budget=10, overlap=2, max_chunks=5, word_starts=lambda: ws)[0].tolist() == [[0, 6]]
    empty = np.zeros(0, dtype=np.int64)
    assert windows(empty, empty, budget=10, overlap=2, max_chunks=5, word_starts=lambda: empty)[0].shape == (0, 2)


def test_text_without_spaces_falls_back_to_pre_tokenizer_words_then_a_hard_cut():
    # no whitespace at all (CJK-like): words touch; the pre-tokenizer's word starts are used
    starts, ends, ws = offsets_of([2] * 50, gap=0)
    calls = []
    spans, _ = windows(starts, ends, budget=7, overlap=0, max_chunks=100, word_starts=lambda: calls.append(1) or ws)
    assert calls and all(b % 2 == 0 for _, b in spans.tolist())  # cut between 2-token words
    check(spans.tolist(), starts, ends, 7, 0)
    # one 30-token word: cut inside it, the only way to stay within the window
    starts, ends, ws = offsets_of([30])
    spans, _ = windows(starts, ends, budget=8, overlap=0, max_chunks=100, word_starts=lambda: ws)
    assert spans.tolist() == [[0, 8], [8, 16], [16, 24], [24, 30]]


def test_the_cap_cuts_and_says_so():
    starts, ends, ws = offsets_of([1] * 100)
    spans, capped = windows(starts, ends, budget=10, overlap=0, max_chunks=3, word_starts=lambda: ws)
    assert capped and spans.tolist() == [[0, 10], [10, 20], [20, 30]]


def test_settings_are_validated_with_the_reason():
    with pytest.raises(ValueError, match="overlap"):
        ChunkSettings(tokens=64, overlap=40)
    with pytest.raises(ValueError, match=">= 16"):
        ChunkSettings(tokens=8)
    assert ChunkSettings(tokens=128).metadata() == {"tokens": 128, "overlap": 32, "max_chunks": 256}

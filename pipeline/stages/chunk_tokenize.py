"""CPU stage for chunked runs: each record tokenized once, cut into word-aligned windows.

RECORDS in, CHUNK_TOKENIZED out: one row per record, its windows as lists. A window's ids are
``[CLS] + prefix + title + text tokens + [SEP]``, exactly what the tokenizer makes of
``prefix + title + " " + text[char_start:char_end]`` (see :mod:`pipeline.stages.chunking`).
Token ids and offsets go from the tokenizer into numpy arrays; no per-token Python lists are
kept per row.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.errors import UsageError
from pipeline.io import schemas
from pipeline.stages.chunking import MIN_TEXT_TOKENS, ChunkSettings, windows
from pipeline.stages.model import ModelSource
from pipeline.stages.spec import TOKENIZE, Needs
from pipeline.stages.tokenize import CHARS_PER_TOKEN_CUTOFF, cut_at_whitespace, cut_characters, limit_threads

logger = logging.getLogger(__name__)


class ChunkTokenizeSettings:
    """The ChunkTokenizeStage's constructor arguments, as the plan fixes them."""

    model: ModelSource
    prefix: str  # the E5 prefix text, repeated in every window
    chunk: ChunkSettings
    threads: int | None = None  # the Rust tokenizer's threads (the actor's CPUs)


class ChunkTokenizeStage:
    """A callable class over RECORDS tables (one tokenizer per instance): CHUNK_TOKENIZED out."""

    role = TOKENIZE
    needs = Needs(threads_from_cpus=True)  # the Rust tokenizer's pool: the actor's CPUs

    def __init__(self, *, model: ModelSource, prefix: str, chunk: ChunkSettings, threads: int | None = None):
        """Cheap: nothing is loaded and no process setting changes (``setup``, on the actor)."""
        self._model = model
        self._threads = threads
        self._prefix = prefix
        self._chunk = chunk
        # a record longer than this many characters is cut at whitespace before tokenizing:
        # bounded memory for megabyte records, whose windows past max_chunks are dropped anyway
        self._cutoff = chunk.max_chunks * chunk.tokens * CHARS_PER_TOKEN_CUTOFF
        self._backend: Any = None

    def setup(self) -> None:
        """The tokenizer, once per actor (``TimedStage`` calls it when the actor starts; in-process use
        at the first batch), held to the actor's threads; refuses windows with no room for text."""
        if self._backend is not None:
            return
        limit_threads(self._threads)
        backend = copy.deepcopy(self._model.load_tokenizer())
        backend.no_padding()
        backend.no_truncation()
        chunk = self._chunk
        self._prefix_ids = np.asarray(_prefix_ids(backend, self._prefix), dtype=np.int32)
        self._head, self._tail = _special_tokens(backend)
        # the fixed part of every window: special tokens and the prefix
        self._fixed = len(self._head) + len(self._tail) + len(self._prefix_ids)
        if chunk.tokens - self._fixed < MIN_TEXT_TOKENS:
            raise UsageError(f"chunk tokens {chunk.tokens} leave no room for text after {self._fixed} fixed tokens")
        self._cut_chars = cut_characters(backend)
        self._backend = backend

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.setup()
        n = batch.num_rows
        reasons = batch["reject_reason"].to_pylist()
        good = [i for i, r in enumerate(reasons) if r is None]
        texts = batch["text"].to_pylist()
        titles = batch["title"].to_pylist() if "title" in batch.column_names else [None] * n
        built = _Builder(n, self._tail.tolist())
        cut = [cut_at_whitespace(texts[i], self._cutoff, self._cut_chars) for i in good]
        encodings = self._backend.encode_batch(cut, add_special_tokens=False) if good else []
        title_ids = self._titles([titles[i] for i in good])
        fixed_head = self._head.tolist() + self._prefix_ids.tolist()
        for i, text, encoding, title in zip(good, cut, encodings, title_ids):
            budget = self._chunk.tokens - self._fixed - len(title)
            if budget < MIN_TEXT_TOKENS:
                reasons[i] = f"title too long for --chunk-tokens {self._chunk.tokens} ({len(title)} tokens)"
                continue
            n_tokens = len(encoding)
            if not n_tokens:
                reasons[i] = "text has no tokens"
                continue
            head = fixed_head + title
            was_cut = len(text) < len(texts[i])
            if n_tokens <= budget:  # one window: no offsets array, no window placement
                start, end = encoding.token_to_chars(0)[0], encoding.token_to_chars(n_tokens - 1)[1]
                built.add_one(i, head, encoding.ids, start, end, truncated=was_cut)
                continue
            offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
            spans, capped = windows(
                offsets[:, 0],
                offsets[:, 1],
                budget=budget,
                overlap=self._chunk.overlap,
                max_chunks=self._chunk.max_chunks,
                word_starts=lambda e=encoding: _word_starts(e),
            )
            built.add(i, head, np.asarray(encoding.ids, dtype=np.int32), offsets, spans, truncated=capped or was_cut)
        return built.table(batch, reasons)

    def _titles(self, titles: list[str | None]) -> list[list[int]]:
        """Each title's ids (the joining space is not a token), or none."""
        present = [i for i, t in enumerate(titles) if t]
        out: list[list[int]] = [[] for _ in titles]
        if present:
            for i, e in zip(
                present, self._backend.encode_batch([titles[i] for i in present], add_special_tokens=False)
            ):
                out[i] = e.ids
        return out


def _prefix_ids(backend, prefix: str) -> list[int]:
    """The prefix's tokens as they are when text follows it: without its trailing space. For a
    Metaspace tokenizer (XLM-R) ``passage: `` alone ends in a ``▁`` token of its own, while before a
    word that space is the ``▁`` the word's first token starts with (and the text's encoding has it)."""
    return backend.encode(prefix.rstrip(), add_special_tokens=False).ids if prefix.strip() else []


def _special_tokens(backend) -> tuple[np.ndarray, np.ndarray]:
    """The ids the post-processor puts before and after a text ([CLS] and [SEP] for BERT)."""
    probe = "hello"
    bare = backend.encode(probe, add_special_tokens=False).ids
    full = backend.encode(probe, add_special_tokens=True).ids
    for at in range(len(full) - len(bare) + 1):
        if full[at : at + len(bare)] == bare:
            return np.asarray(full[:at], dtype=np.int32), np.asarray(full[at + len(bare) :], dtype=np.int32)
    raise ValueError("cannot tell the tokenizer's special tokens apart from the text's")


def _word_starts(encoding) -> np.ndarray:
    """Indices of tokens that begin a pre-tokenizer word (not the continuation of one)."""
    words = np.asarray([-1 if w is None else w for w in encoding.word_ids], dtype=np.int64)
    return np.flatnonzero(words[1:] != words[:-1]) + 1


class _Builder:
    """Collects a batch's windows into the CHUNK_TOKENIZED columns: ids in one flat list (one
    conversion to numpy per batch), per-window lengths and offsets, windows per row."""

    def __init__(self, rows: int, tail: list[int]):
        self.rows = rows
        self.tail = tail
        self.windows_per_row = np.zeros(rows, dtype=np.int64)
        self.truncated = np.zeros(rows, dtype=bool)
        self.ids: list[int] = []
        self.lengths: list[int] = []
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add_one(self, row: int, head: list[int], ids: list[int], start: int, end: int, *, truncated: bool) -> None:
        """A record that fits one window."""
        self.ids += head
        self.ids += ids
        self.ids += self.tail
        self.lengths.append(len(head) + len(ids) + len(self.tail))
        self.starts.append(start)
        self.ends.append(end)
        self.windows_per_row[row] = 1
        self.truncated[row] = truncated

    def add(
        self, row: int, head: list[int], ids: np.ndarray, offsets: np.ndarray, spans: np.ndarray, *, truncated: bool
    ) -> None:
        for first, end in spans.tolist():
            self.ids += head
            self.ids += ids[first:end].tolist()
            self.ids += self.tail
        self.lengths += (spans[:, 1] - spans[:, 0] + len(head) + len(self.tail)).tolist()
        self.starts += offsets[spans[:, 0], 0].tolist()
        self.ends += offsets[spans[:, 1] - 1, 1].tolist()
        self.windows_per_row[row] = len(spans)
        self.truncated[row] = truncated

    def table(self, batch: pa.Table, reasons: list[str | None]) -> pa.Table:
        ok = np.array([r is None for r in reasons], dtype=bool)
        self.windows_per_row[~ok] = 0
        outer = np.zeros(self.rows + 1, dtype=np.int32)
        np.cumsum(self.windows_per_row, out=outer[1:])
        lengths = np.asarray(self.lengths, dtype=np.int32)
        inner = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=inner[1:])
        mask = pa.array(~ok)
        values = np.asarray(self.ids, dtype=np.int32)
        windows_ids = pa.ListArray.from_arrays(pa.array(inner), pa.array(values))

        def per_row(values: pa.Array) -> pa.Array:
            return pa.ListArray.from_arrays(pa.array(outer), values, mask=mask)

        return schemas.keyed_table(
            batch,
            schemas.CHUNK_TOKENIZED,
            reject_reason=pa.array(reasons, pa.string()),
            input_ids=per_row(windows_ids),
            char_start=per_row(pa.array(np.asarray(self.starts, dtype=np.int64))),
            char_end=per_row(pa.array(np.asarray(self.ends, dtype=np.int64))),
            n_tokens=per_row(pa.array(lengths)),
            truncated=pa.array(self.truncated & ok),
        )

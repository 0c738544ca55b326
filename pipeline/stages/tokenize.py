"""CPU stage: E5 prefix + fast tokenizer + truncation, compact token ids out.

RECORDS in, TOKENIZED out. Token ids stay unpadded (list<int32>); padding is
the encode stage's job, per length-sorted micro-batch.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.io import schemas
from pipeline.stages.model import ModelSource
from pipeline.stages.spec import TOKENIZE, Needs

logger = logging.getLogger(__name__)

# Documents longer than this many characters per allowed token are cut at a
# whitespace before tokenizing (exact: see ``_tokenize``); saves time on
# megabyte-sized documents that are truncated to max_length tokens anyway.
CHARS_PER_TOKEN_CUTOFF = 24


class TokenizeSettings:
    """The TokenizeStage's constructor arguments, as the plan fixes them."""

    model: ModelSource  # where the tokenizer comes from
    prefix: str  # the E5 prefix text ('passage: ', 'query: ' or '')
    max_length: int  # tokens per text, special tokens and prefix included
    threads: int | None = None  # the Rust tokenizer's threads (the actor's CPUs); None: its default


class TokenizeStage:
    """A callable class over RECORDS tables (one tokenizer per instance): TOKENIZED out."""

    role = TOKENIZE
    needs = Needs(threads_from_cpus=True)  # the Rust tokenizer's pool: the actor's CPUs

    def __init__(self, *, model: ModelSource, prefix: str, max_length: int, threads: int | None = None):
        """Cheap: nothing is loaded and no process setting changes (``setup``, on the actor)."""
        self._model = model
        self._threads = threads
        self._prefix = prefix
        self._max_length = max_length
        self._cutoff = max_length * CHARS_PER_TOKEN_CUTOFF
        self._backend: Any = None

    def setup(self) -> None:
        """The tokenizer, once per actor (``TimedStage`` calls it when the actor starts; in-process use
        at the first batch), held to the actor's threads."""
        if self._backend is not None:
            return
        limit_threads(self._threads)
        backend = copy.deepcopy(self._model.load_tokenizer())
        backend.no_padding()
        backend.enable_truncation(self._max_length)
        self._cut_chars = cut_characters(backend)
        self._backend = backend

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = pc.is_null(batch["reject_reason"]).to_numpy(zero_copy_only=False)
        texts = batch["text"].to_pylist()
        ids, truncated = self.tokenize([t for t, good in zip(texts, ok) if good])
        n = batch.num_rows
        lengths = np.zeros(n, dtype=np.int32)
        trunc = np.zeros(n, dtype=bool)
        good_rows = np.flatnonzero(ok)
        lengths[good_rows] = [len(x) for x in ids]
        trunc[good_rows] = truncated
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1]))
        input_ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values), mask=pa.array(~ok))
        return schemas.keyed_table(
            batch,
            schemas.TOKENIZED,
            input_ids=input_ids,
            n_tokens=pa.array(np.where(ok, lengths, 0), pa.int32()),
            truncated=pa.array(trunc),
        )

    def tokenize(self, texts: list[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids (special tokens included, truncated) and whether each was truncated."""
        self.setup()
        prefixed = [self._prefix + t for t in texts]
        cut = [cut_at_whitespace(t, self._cutoff, self._cut_chars) for t in prefixed]
        encodings = self._backend.encode_batch(cut)
        ids = [e.ids for e in encodings]
        truncated = [bool(e.overflowing) for e in encodings]
        # A cut text that no longer overflows might have fit whole: redo those from the full text.
        redo = [i for i, (c, p) in enumerate(zip(cut, prefixed)) if len(c) < len(p) and not truncated[i]]
        if redo:
            for i, e in zip(redo, self._backend.encode_batch([prefixed[i] for i in redo])):
                ids[i], truncated[i] = e.ids, bool(e.overflowing)
        return ids, truncated


def cut_characters(backend) -> str:
    """Where a long text may be cut before tokenizing without changing the tokens before the cut.

    BERT-style pre-tokenizers split at every whitespace character; a Metaspace one (XLM-R, the
    multilingual E5 models) splits only at spaces (a tab or newline is part of a word), so only
    spaces. Any other pre-tokenizer: nowhere ("" disables the cut; the text is tokenized whole).
    """
    import json

    spec = json.loads(backend.to_str()).get("pre_tokenizer") or {}
    kinds = {p.get("type") for p in spec.get("pretokenizers", [spec])}
    if kinds & {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}:
        return " \n"
    if "Metaspace" in kinds and all(p.get("split", True) for p in spec.get("pretokenizers", [spec])):
        return " "
    logger.info("tokenizer pre-tokenizer %s: long texts are tokenized whole (no cut before tokenizing)", kinds)
    return ""


def cut_at_whitespace(text: str, limit: int, chars: str = " \n") -> str:
    """The text up to the last of ``chars`` before ``limit`` chars (and before any whitespace run
    that ends there), or the text unchanged.

    The pre-tokenizer splits at those characters and the normalizer is per character, so the
    tokens before the cut are the full text's tokens; when the cut text alone overflows
    max_length, its truncated ids equal the full text's.
    """
    if len(text) <= limit or not chars:
        return text
    space = max(text.rfind(c, 0, limit) for c in chars)
    return text[:space].rstrip() if space > 0 else text


def limit_threads(threads: int | None) -> None:
    """Hold the Rust tokenizer to ``threads`` (its pool reads RAYON_NUM_THREADS when first used):
    an actor reserved one CPU must not run one thread per core of a 64-core node."""
    if threads is not None:
        os.environ.setdefault("RAYON_NUM_THREADS", str(max(1, threads)))

"""Long-document retrieval: does embedding every window find what truncation cannot?

Documents are several real paragraphs joined (well past 512 tokens). Each query is the first
sentence of one paragraph, at every position of its document; that sentence is removed from the
document, so a query matches its paragraph's remaining text, not itself. A document's score is
its best window's (chunking) or its one vector's (truncation), on the same model; recall@k is
the share of queries whose document ranks in the top k, overall and split by whether the
target paragraph starts within the first ``max_length`` tokens.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from e5tools.sample_text import passages
from pipeline.stages.chunking import ChunkSettings
from pipeline.stages.embedder import Embedder

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Task:
    docs: list[str]
    queries: list[str]
    target: np.ndarray  # the document each query targets
    target_char: np.ndarray  # where the target paragraph starts in its document


def build_task(*, n_docs: int = 40, paragraphs_per_doc: int = 12, seed: int = 0) -> Task:
    """Documents of ``paragraphs_per_doc`` distinct paragraphs; one query per paragraph that has
    a first sentence to spare (5+ words, and text left after it)."""
    rng = random.Random(seed)
    pool = [text for _, text in passages(100_000)]
    rng.shuffle(pool)
    if len(pool) < n_docs * paragraphs_per_doc:
        raise ValueError(f"only {len(pool)} paragraphs for {n_docs} x {paragraphs_per_doc}")
    docs, queries, target, target_char = [], [], [], []
    for d in range(n_docs):
        parts: list[str] = []
        pos = 0
        for para in pool[d * paragraphs_per_doc : (d + 1) * paragraphs_per_doc]:
            pieces = _SENTENCE_END.split(para, maxsplit=1)
            if len(pieces) == 2 and len(pieces[0].split()) >= 5 and len(pieces[1].split()) >= 5:
                queries.append(pieces[0])
                target.append(d)
                target_char.append(pos)
                para = pieces[1]
            parts.append(para)
            pos += len(para) + 2
        docs.append("\n\n".join(parts))
    return Task(docs, queries, np.asarray(target), np.asarray(target_char))


def recall(scores: np.ndarray, target: np.ndarray, k: int) -> float:
    """Share of queries (rows of ``scores`` over documents) whose target is in the top k."""
    top = np.argsort(-scores, axis=1)[:, :k]
    return float((top == target[:, None]).any(axis=1).mean())


def best_window_scores(query_vecs: np.ndarray, window_vecs: np.ndarray, record: np.ndarray, n_docs: int) -> np.ndarray:
    """(queries, documents): each document's best window."""
    sims = query_vecs @ window_vecs.T
    out = np.full((len(query_vecs), n_docs), -np.inf, dtype=np.float32)
    for d in range(n_docs):
        mine = record == d
        if mine.any():
            out[:, d] = sims[:, mine].max(axis=1)
    return out


def run_check(
    model: str,
    *,
    n_docs: int = 24,
    paragraphs_per_doc: int = 30,
    max_length: int = 512,
    chunkings: Sequence[ChunkSettings] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Recall@1/@10 of truncation and of each chunking on one task; a JSON-able report."""
    task = build_task(n_docs=n_docs, paragraphs_per_doc=paragraphs_per_doc, seed=seed)
    chunkings = list(chunkings or [ChunkSettings(tokens=max_length)])
    passage = Embedder(model, prefix="passage", max_length=max_length)
    queries = Embedder(model, prefix="query", max_length=max_length).encode(task.queries)
    doc_tokens, starts = target_token_starts(model, task)
    beyond = starts >= max_length - 4  # past what truncation reads ([CLS], prefix, [SEP])
    runs: dict[str, np.ndarray] = {"truncate": queries @ passage.encode(task.docs).T}
    windows: dict[str, int] = {"truncate": len(task.docs)}
    for chunk in chunkings:
        w = passage.encode_windows(task.docs, chunk)
        name = f"chunk {chunk.tokens}/{chunk.overlap}"
        runs[name] = best_window_scores(queries, w.embeddings, w.record, len(task.docs))
        windows[name] = len(w.record)
    report: dict[str, Any] = {
        "model": model,
        "docs": len(task.docs),
        "queries": len(task.queries),
        "queries_beyond_max_length": int(beyond.sum()),
        "mean_doc_tokens": float(doc_tokens.mean()),
        "max_length": max_length,
        "results": {},
    }
    for name, scores in runs.items():
        report["results"][name] = {
            "windows": windows[name],
            "recall@1": round(recall(scores, task.target, 1), 4),
            "recall@10": round(recall(scores, task.target, 10), 4),
            "recall@1_within": round(recall(scores[~beyond], task.target[~beyond], 1), 4),
            "recall@1_beyond": round(recall(scores[beyond], task.target[beyond], 1), 4) if beyond.any() else None,
        }
    return report


def target_token_starts(model: str, task: Task) -> tuple[np.ndarray, np.ndarray]:
    """Each document's length in tokens, and the token at which each query's paragraph starts."""
    from pipeline.stages.model import ModelSource

    backend = copy.deepcopy(ModelSource(name_or_path=model).load_tokenizer())
    backend.no_truncation()
    backend.no_padding()
    encodings = backend.encode_batch(task.docs, add_special_tokens=False)
    starts = [np.searchsorted([s for s, _ in encodings[d].offsets], c) for d, c in zip(task.target, task.target_char)]
    return np.asarray([len(e.ids) for e in encodings]), np.asarray(starts)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Long-document retrieval: {report['docs']} documents (mean {report['mean_doc_tokens']:.0f} tokens), "
        f"{report['queries']} queries ({report['queries_beyond_max_length']} target a paragraph starting past "
        f"{report['max_length']} tokens); model {report['model']}",
        "",
        "| embedding | vectors | recall@1 | recall@10 | recall@1, target within max-length | recall@1, beyond |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["results"].items():
        beyond = "" if r["recall@1_beyond"] is None else f"{r['recall@1_beyond']:.3f}"
        lines.append(
            f"| {name} | {r['windows']} | {r['recall@1']:.3f} | {r['recall@10']:.3f} | "
            f"{r['recall@1_within']:.3f} | {beyond} |"
        )
    return "\n".join(lines) + "\n"

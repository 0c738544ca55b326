"""Long-document retrieval on real weights: every window embedded beats the first 512 tokens."""

import numpy as np
import pytest

from e5tools.longdoc import best_window_scores, build_task, recall, run_check
from pipeline.stages.chunking import ChunkSettings


@pytest.mark.unit
def test_task_queries_target_every_position_and_are_held_out():
    task = build_task(n_docs=6, paragraphs_per_doc=20, seed=1)
    assert len(task.docs) == 6 and len(task.queries) == len(task.target) == len(task.target_char)
    for query, d, char in zip(task.queries, task.target, task.target_char):
        assert query not in task.docs[d]  # the query sentence was taken out of its paragraph
        assert task.docs[d][char - 2 : char] in ("", "\n\n")  # a paragraph starts there
    # targets spread from a document's start to its end
    fractions = [c / len(task.docs[d]) for d, c in zip(task.target, task.target_char)]
    assert min(fractions) == 0.0 and max(fractions) > 0.8


@pytest.mark.unit
def test_scores_and_recall():
    q = np.eye(3, dtype=np.float32)
    windows = np.array([[1, 0, 0], [0, 0.5, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    scores = best_window_scores(q, windows, np.array([0, 1, 1, 2]), 3)
    assert scores.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert recall(scores, np.array([0, 1, 0]), 1) == pytest.approx(2 / 3)
    assert recall(scores, np.array([0, 1, 0]), 3) == 1.0


@pytest.mark.rehearsal
def test_windows_beat_truncation_on_long_documents(minilm_path):
    report = run_check(minilm_path, n_docs=12, paragraphs_per_doc=30, chunkings=[ChunkSettings(tokens=256, overlap=32)])
    assert report["mean_doc_tokens"] > 1000 and report["queries_beyond_max_length"] > 50
    truncate, chunk = report["results"]["truncate"], report["results"]["chunk 256/32"]
    assert truncate["recall@1_beyond"] < 0.1  # truncation cannot see past 512 tokens...
    assert chunk["recall@1_beyond"] > truncate["recall@1_beyond"] + 0.1  # ...every window can
    assert chunk["recall@1"] > truncate["recall@1"] and chunk["recall@10"] > truncate["recall@10"]

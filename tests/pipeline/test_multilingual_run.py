"""Multilingual E5's shape end to end: a corpus in nine scripts through the whole job on a real local
Ray cluster with an XLM-R model (random weights, Unigram/Metaspace tokenizer trained here), every
record once, each embedding matching the model card's code on that model."""

import json

import numpy as np
import pyarrow.dataset as pads
import pytest

from e5tools.parity import TOLERANCE, parity_error
from pipeline.config import JobConfig
from pipeline.errors import UsageError
from pipeline.runner import run_job
from tests.pipeline.stages.test_multilingual import corpus
from tests.reference import reference_embeddings


@pytest.mark.integration
def test_multilingual_corpus_end_to_end_matches_the_card(ray_cluster, xlmr_path, tmp_path):
    docs = corpus(120, seed=3) + ["敏捷的棕色狐狸跳过了懒狗。" * 400]  # one far past 512 tokens
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "shard.jsonl").write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(docs))
    )
    config = JobConfig(
        inputs=(str(tmp_path / "in"),),
        output=str(tmp_path / "out"),
        model=xlmr_path,
        progress=False,
        rows_per_block=32,
        rows_per_file=64,
        batch_size=8,
    )
    summary = run_job(config)
    assert summary.status == "complete" and summary.rows_embedded == len(docs)
    table = pads.dataset(str(tmp_path / "out"), format="parquet").to_table()
    got = dict(zip(table["id"].to_pylist(), np.stack(table["embedding"].to_numpy(zero_copy_only=False))))
    assert sorted(got) == sorted(f"d{i}" for i in range(len(docs)))
    want, lengths = reference_embeddings(xlmr_path, ["passage: " + t for t in docs], max_length=512)
    cosines = np.array([float(np.dot(got[f"d{i}"], want[i])) for i in range(len(docs))])
    assert cosines.min() >= 0.9999, cosines.min()
    # random weights: different texts are close too, so the error is measured against their spread
    assert parity_error(np.stack([got[f"d{i}"] for i in range(len(docs))]), want) <= TOLERANCE["float32"]
    assert max(lengths) == 512  # the long one was truncated at the 514-position model's limit
    n_tokens = dict(zip(table["id"].to_pylist(), table["n_tokens"].to_pylist()))
    assert [n_tokens[f"d{i}"] for i in range(len(docs))] == lengths.tolist()


@pytest.mark.unit
def test_a_max_length_past_the_position_table_is_refused(xlmr_path, tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    config = JobConfig(
        inputs=(str(tmp_path / "in.jsonl"),), output=str(tmp_path / "o"), model=xlmr_path, max_length=514
    )
    with pytest.raises(UsageError, match="more than .* takes \\(512 tokens"):
        run_job(config)

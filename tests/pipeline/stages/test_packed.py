"""Packed micro-batches (``--attention packed``): rows end to end, no padding, the same embeddings as
the model card's code. On CPU attention runs per row (torch's varlen kernel is CUDA-only)."""

import numpy as np
import pytest

from pipeline.stages.embedder import Embedder, records_table
from pipeline.stages.encode import EncodeStage
from pipeline.stages.model import ModelSource
from pipeline.stages.tokenize import TokenizeStage
from tests.faults import OutOfMemoryAbove
from tests.reference import reference_embeddings

pytestmark = pytest.mark.unit

TEXTS = ["short", "a medium sized sentence about gzip compression", "long words " * 300, "x", "ünïcödé 東京 text"]


@pytest.mark.parametrize("model", ["minilm_path", "xlmr_path"])
def test_packed_equals_the_model_card_code(model, request):
    path = request.getfixturevalue(model)
    ours = Embedder(path, prefix="passage", batch_size=2, attention="packed").encode(TEXTS)
    ref, _ = reference_embeddings(path, ["passage: " + t for t in TEXTS])
    assert (ours * ref).sum(1).min() >= 0.9999


def _tokens(path):
    return TokenizeStage(model=ModelSource(name_or_path=path), prefix="passage: ", max_length=512)(
        records_table(TEXTS, source="s")
    )


def test_micro_batches_hold_at_most_the_padded_batch_token_slots(minilm_path):
    stage = EncodeStage(model=ModelSource(name_or_path=minilm_path), batch_size=2, device="cpu", attention="packed")
    lengths = np.array([500, 10, 20, 30, 400, 5, 5, 5])
    order = np.argsort(-lengths, kind="stable")
    batches = list(stage._micro_batches(lengths, order))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))  # every row once
    assert all(lengths[b].sum() <= 2 * 500 or len(b) == 1 for b in batches)
    assert len(batches) < len(lengths) / 2  # short rows share a batch: fewer launches than padded


def test_packed_out_of_memory_splits_rows_and_matches(minilm_path):
    class TightMemory(OutOfMemoryAbove):
        max_rows = 1

    source = ModelSource(name_or_path=minilm_path)
    tokens = _tokens(minilm_path)
    tight = TightMemory(model=source, batch_size=4, dtype="float32", device="cpu", attention="packed")
    out = np.asarray(tight(tokens)["embedding"].to_pylist())
    normal = np.asarray(EncodeStage(model=source, batch_size=4, device="cpu")(tokens)["embedding"].to_pylist())
    assert tight.oom_splits >= 1 and np.allclose(out, normal, atol=1e-5)


def test_an_unknown_attention_mode_lists_the_valid_ones(minilm_path):
    with pytest.raises(ValueError, match="padded, packed"):
        EncodeStage(model=ModelSource(name_or_path=minilm_path), batch_size=2, device="cpu", attention="flash")

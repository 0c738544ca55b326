"""The GPU tier: what only a CUDA device can show. Skipped where there is none (CI says so in its
summary); `make test-gpu` on a GPU node, and the device check runs it.

- parity with real weights in bf16 against the model card's float32 code;
- the memory cap with two actors per GPU: an actor cannot allocate past its share;
- packed attention runs (no silent fallback) and matches the card;
- shape buckets compiled with CUDA graphs reuse their graphs and match the card.
"""

import pytest

from e5tools.parity import TOLERANCE, parity_error
from e5tools.reference import reference_embeddings
from e5tools.sample_text import PARITY_TEXTS
from pipeline.stages.embedder import Embedder

pytestmark = pytest.mark.gpu

TEXTS = PARITY_TEXTS * 4


def _reference(path: str) -> "object":
    return reference_embeddings(path, ["passage: " + t for t in TEXTS], 512, device="cuda")[0]


def test_bf16_with_real_weights_matches_the_card(minilm_path):
    ours = Embedder(minilm_path, prefix="passage", batch_size=8, dtype="bfloat16", device="cuda").encode(TEXTS)
    assert parity_error(ours, _reference(minilm_path)) <= TOLERANCE["bfloat16"]


def test_packed_attention_runs_on_the_gpu_and_matches_the_card(minilm_path):
    # flash varlen attention runs in bf16/fp16 only (float32 falls back to padded, with a warning)
    embedder = Embedder(
        minilm_path, prefix="passage", batch_size=8, dtype="bfloat16", device="cuda", attention="packed"
    )
    ours = embedder.encode(TEXTS)
    assert embedder.encoder.attention == "packed"  # it ran packed, not the padded fallback
    assert parity_error(ours, _reference(minilm_path)) <= TOLERANCE["bfloat16"]


def test_shape_buckets_with_cuda_graphs_reuse_their_graphs(minilm_path):
    from torch._dynamo.utils import counters

    embedder = Embedder(minilm_path, prefix="passage", batch_size=8, device="cuda", shape_buckets=(64, 512))
    warmed = counters["stats"]["unique_graphs"]
    ours = embedder.encode(TEXTS)
    assert counters["stats"]["unique_graphs"] == warmed  # no shape outside the buckets
    assert parity_error(ours, _reference(minilm_path)) <= TOLERANCE["float32"]


def test_an_actor_sharing_a_gpu_cannot_allocate_past_its_share(minilm_path):
    """Two actors per GPU: each is capped at its share (the plan's memory_fraction); an allocation
    past it fails in this actor instead of growing into the other's memory."""
    import torch

    from pipeline.stages.encode import EncodeStage
    from pipeline.stages.model import ModelSource

    stage = EncodeStage(model=ModelSource(name_or_path=minilm_path), batch_size=8, device="cuda", memory_fraction=0.5)
    stage.setup()
    total = torch.cuda.get_device_properties(0).total_memory
    with pytest.raises(torch.cuda.OutOfMemoryError):
        torch.empty(int(total * 0.6), dtype=torch.uint8, device="cuda")
    held = torch.empty(int(total * 0.3), dtype=torch.uint8, device="cuda")  # within its share: fine
    del held

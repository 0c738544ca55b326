"""``--shape-buckets``: the encoder compiled for a few static shapes, warmed at start; every batch
after that reuses one of them, and the embeddings are the model card's."""

import pytest

from e5tools.parity import TOLERANCE, parity_error
from pipeline.stages.embedder import Embedder
from tests.reference import reference_embeddings

pytestmark = pytest.mark.rehearsal


TEXTS = ["short", "a medium sized sentence about gzip compression", "long words " * 100, "x", "ünïcödé 東京 text"] * 3


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from e5tools.random_model import write_random_bert

    return write_random_bert(str(tmp_path_factory.mktemp("bert")), layers=2, hidden=64, heads=4, ffn=128, seed=3)


def test_bucketed_compiled_encoder_matches_the_card_without_compiling_again(small_model):
    from torch._dynamo.utils import counters

    embedder = Embedder(small_model, prefix="passage", batch_size=4, max_length=256, shape_buckets=(32, 256))
    warmed = counters["stats"]["unique_graphs"]
    assert warmed >= 2  # one graph per bucket, built at start-up
    ours = embedder.encode(TEXTS)  # 15 rows: 3 full micro-batches and one padded with filler rows
    assert counters["stats"]["unique_graphs"] == warmed  # no shape outside the buckets
    ref, _ = reference_embeddings(small_model, ["passage: " + t for t in TEXTS], max_length=256)
    assert ours.shape == ref.shape and (ours * ref).sum(1).min() >= 0.9999
    assert parity_error(ours, ref) <= TOLERANCE["float32"]


def test_shape_buckets_must_reach_max_length_and_not_mix_with_packed():
    from pipeline.config import JobConfig
    from pipeline.errors import UsageError

    with pytest.raises(UsageError, match="must end at --max-length 512"):
        JobConfig(inputs=("i",), output="o", shape_buckets=(128, 256))
    with pytest.raises(UsageError, match="must end at --max-length 512"):  # past the position table
        JobConfig(inputs=("i",), output="o", shape_buckets=(128, 1024))
    with pytest.raises(UsageError, match="ascending"):
        JobConfig(inputs=("i",), output="o", shape_buckets=(512, 128))
    with pytest.raises(UsageError, match="packed"):
        JobConfig(inputs=("i",), output="o", shape_buckets=(512,), attention="packed")
    assert JobConfig(inputs=("i",), output="o", shape_buckets=[128, 512]).shape_buckets == (128, 512)

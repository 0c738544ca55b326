import numpy as np
import pytest

from e5tools.parity import TOLERANCE, parity_error
from pipeline.io import schemas
from pipeline.stages.embedder import records_table
from pipeline.stages.encode import EncodeStage
from pipeline.stages.model import ModelSource
from pipeline.stages.tokenize import TokenizeStage
from tests.faults import OutOfMemoryAbove
from tests.reference import reference_embeddings

pytestmark = pytest.mark.unit

TEXTS = [
    "what is the capital of France?",
    "Paris is the capital and most populous city of France. " * 60,  # > 512 tokens: truncated
    "ok",
    "The gzip module provides a simple interface to compress and decompress files.",
    "caf\u00e9 \U0001f600 \u4e2d\u6587 ",
    "word " * 200,
    "a b c d e f g",
]


def embed(
    model_path, texts, *, batch_size=3, prefix="passage: ", dtype="float32", output_dtype="float32", rejects=None
):
    source = ModelSource(name_or_path=model_path)
    records = records_table(texts, source="s", rejects=rejects)
    tokens = TokenizeStage(model=source, prefix=prefix, max_length=512)(records)
    stage = EncodeStage(model=source, batch_size=batch_size, dtype=dtype, device="cpu", output_dtype=output_dtype)
    return stage(tokens), stage


@pytest.mark.parametrize("model", ["minilm_path", "tiny_e5_path"])
def test_parity_with_model_card_reference(model, request):
    path = request.getfixturevalue(model)
    out, stage = embed(path, TEXTS)
    ours = np.asarray(out["embedding"].to_pylist(), dtype=np.float32)
    ref, lengths = reference_embeddings(path, ["passage: " + t for t in TEXTS])
    cosine = (ours * ref).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cosine.min() >= 0.99999, cosine
    assert parity_error(ours, ref) <= TOLERANCE["float32"]  # against the spread between texts (random weights)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert out["n_tokens"].to_pylist() == lengths.tolist()
    assert out["truncated"].to_pylist()[1] is True
    assert out.schema == schemas.embedded_schema(stage.dim)


def test_order_is_restored_whatever_the_batch_size(minilm_path):
    one, _ = embed(minilm_path, TEXTS, batch_size=1)
    many, _ = embed(minilm_path, TEXTS, batch_size=64)
    a = np.asarray(one["embedding"].to_pylist())
    b = np.asarray(many["embedding"].to_pylist())
    assert one["id"].to_pylist() == many["id"].to_pylist() == [str(i) for i in range(len(TEXTS))]
    assert np.allclose(a, b, atol=1e-5)


def test_float16_output_and_rejects(minilm_path):
    out, stage = embed(minilm_path, ["good text", None], output_dtype="float16", rejects=[None, "empty"])
    assert out.schema.field("embedding").type == schemas.embedding_type(stage.dim, "float16")
    assert out["embedding"].to_pylist()[1] is None
    assert out["embedding"].null_count == 1


def test_bfloat16_stays_close_to_float32(minilm_path):
    full, _ = embed(minilm_path, TEXTS)
    half, _ = embed(minilm_path, TEXTS, dtype="bfloat16")
    a = np.asarray(full["embedding"].to_pylist())
    b = np.asarray(half["embedding"].to_pylist())
    assert ((a * b).sum(1) / np.linalg.norm(b, axis=1)).min() > 0.99


def test_out_of_memory_splits_the_batch_and_retries(minilm_path, caplog):
    """Injected OOM (no GPU here): batches above 2 rows fail; results must still match."""
    source = ModelSource(name_or_path=minilm_path)

    class TightMemory(OutOfMemoryAbove):
        max_rows = 2

    records = records_table(TEXTS, source="s")
    tokens = TokenizeStage(model=source, prefix="passage: ", max_length=512)(records)
    tight = TightMemory(model=source, batch_size=7, dtype="float32", device="cpu")
    out = tight(tokens)
    assert tight.oom_splits >= 2
    assert "out of memory" in caplog.text
    normal, _ = embed(minilm_path, TEXTS, batch_size=7)
    assert np.allclose(np.asarray(out["embedding"].to_pylist()), np.asarray(normal["embedding"].to_pylist()), atol=1e-5)


@pytest.mark.parametrize("attention", ["padded", "packed"])
def test_an_out_of_memory_mid_call_loses_no_row(minilm_path, attention):
    """A lowered micro-batch must not skip the rows between the old and the new batch size: 60 rows,
    batch 16, every micro-batch above 5 rows fails once lowered to 8, then 4."""
    source = ModelSource(name_or_path=minilm_path)

    class TightMemory(OutOfMemoryAbove):
        max_rows = 5

    texts = [f"row {i} " + "word " * (i % 7) for i in range(60)]
    tokens = TokenizeStage(model=source, prefix="passage: ", max_length=512)(records_table(texts, source="s"))
    tight = TightMemory(model=source, batch_size=16, dtype="float32", device="cpu", attention=attention)
    out = np.asarray(tight(tokens)["embedding"].to_pylist())
    normal = np.asarray(EncodeStage(model=source, batch_size=16, device="cpu")(tokens)["embedding"].to_pylist())
    assert tight.oom_splits >= 1 and tight.batch_size < 16
    assert np.allclose(out, normal, atol=1e-5)  # every row, in order: none skipped, none left uninitialised


def test_embedder_is_the_model_card_code_in_process(minilm_path):
    from pipeline.stages.embedder import Embedder

    texts = ["how do I compress data with gzip?", "the capital of France"]
    ours = Embedder(minilm_path, prefix="query", batch_size=2).encode(texts)
    ref, _ = reference_embeddings(minilm_path, ["query: " + t for t in texts])
    assert ours.shape == (2, 384) and ours.dtype == np.float32
    assert (ours * ref).sum(1).min() >= 0.99999
    with pytest.raises(ValueError, match="passage, query, none"):
        Embedder(minilm_path, prefix="question")


def test_a_gpu_actor_without_cuda_fails_loudly(minilm_path, monkeypatch):
    monkeypatch.delenv("E5_EMBED_ALLOW_CPU_ON_GPU", raising=False)
    with pytest.raises(RuntimeError, match="sees no CUDA device"):
        EncodeStage(model=ModelSource(name_or_path=minilm_path), batch_size=2, device="cpu", expect_gpu=True)


def test_cublas_workspace_failure_is_recovered_outside_the_handler_and_lowers_the_batch(minilm_path):
    import sys

    source = ModelSource(name_or_path=minilm_path)
    seen_exc_during_retry = []

    class NoWorkspace(EncodeStage):
        def _launch(self, input_ids, mask):
            seen_exc_during_retry.append(sys.exc_info()[0])
            if len(input_ids) > 2:
                raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)")
            return super()._launch(input_ids, mask)

    tokens = TokenizeStage(model=source, prefix="passage: ", max_length=512)(records_table(TEXTS, source="s"))
    stage = NoWorkspace(model=source, batch_size=7, dtype="float32", device="cpu")
    out = stage(tokens)
    assert stage.oom_splits >= 1 and stage.batch_size <= 3  # lowered for the rest of the actor's life
    assert all(exc is None for exc in seen_exc_during_retry)  # no retry ran inside an except block
    normal, _ = embed(minilm_path, TEXTS, batch_size=7)
    assert np.allclose(np.asarray(out["embedding"].to_pylist()), np.asarray(normal["embedding"].to_pylist()), atol=1e-5)
    splits, calls = stage.oom_splits, len(seen_exc_during_retry)
    stage(tokens)  # the next Ray batch starts at the lowered size: no new failures
    assert stage.oom_splits == splits
    assert len(seen_exc_during_retry) - calls == -(-len(TEXTS) // stage.batch_size)

    class Broken(EncodeStage):
        def _launch(self, input_ids, mask):
            raise RuntimeError("some other error")

    with pytest.raises(RuntimeError, match="some other error"):
        Broken(model=source, batch_size=7, dtype="float32", device="cpu")(tokens)


def test_construction_is_cheap_and_setup_loads_once(minilm_path, monkeypatch):
    """Building the stage reads no weights (Ray builds it on the actor, a driver may build it to
    check settings); ``setup`` loads them once, and a first batch in-process sets it up itself."""
    loads = []
    real_load = ModelSource.load_model

    def counted(self, **kw):
        loads.append(kw)
        return real_load(self, **kw)

    monkeypatch.setattr(ModelSource, "load_model", counted)
    stage = EncodeStage(model=ModelSource(name_or_path=minilm_path), batch_size=4, device="cpu")
    assert loads == [] and stage.model is None
    stage.setup()
    stage.setup()
    assert len(loads) == 1 and stage.dim == 384
    lazy = EncodeStage(model=ModelSource(name_or_path=minilm_path), batch_size=4, device="cpu")
    tokens = TokenizeStage(model=lazy.source, prefix="passage: ", max_length=512)(records_table(TEXTS, source="s"))
    assert lazy(tokens).num_rows == len(TEXTS) and len(loads) == 2


def test_setup_holds_torch_to_the_threads_the_plan_gave(minilm_path):
    """A GPU actor's one reserved core (the plan's torch_threads=1) holds for any device."""
    import torch

    before = torch.get_num_threads()
    try:
        EncodeStage(model=ModelSource(name_or_path=minilm_path), batch_size=4, device="cpu", torch_threads=1).setup()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_each_shape_bucket_is_warmed_twice_before_the_first_batch(minilm_path):
    """CUDA-graph trees record a shape's graph on its second call: one warm-up call per bucket left the
    capture to the first real batches. The launches are counted (no compile here: the compiled path is
    the rehearsal tier's test_buckets)."""
    from pipeline.stages.encode import WARM_CALLS

    widths = []

    class Counting(EncodeStage):
        def _launch(self, input_ids, mask):
            widths.append(input_ids.shape)
            return super()._launch(input_ids, mask)

    stage = Counting(model=ModelSource(name_or_path=minilm_path), batch_size=3, device="cpu")
    stage.setup()
    stage.shape_buckets = (16, 32)
    stage._warm_buckets()
    assert WARM_CALLS == 2 and widths == [(3, 16), (3, 16), (3, 32), (3, 32)]


def test_the_padding_gather_equals_slicing_row_by_row():
    from pipeline.stages.encode import _gather

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, size=50)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = rng.integers(1000, 30000, size=int(offsets[-1])).astype(np.int32)
    rows = rng.permutation(50)[:17]
    ids, mask = _gather(values, offsets[rows], lengths[rows], 48, 0)
    assert ids.dtype == np.int64 and ids.shape == mask.shape == (17, 48)
    for i, r in enumerate(rows):
        row = values[offsets[r] : offsets[r + 1]]
        assert ids[i, : len(row)].tolist() == row.tolist() and not ids[i, len(row) :].any()
        assert mask[i].sum() == len(row) and mask[i, : len(row)].all()
    assert (
        ids[mask.astype(bool)].tolist() == np.concatenate([values[offsets[r] : offsets[r + 1]] for r in rows]).tolist()
    )


@pytest.mark.parametrize("torch_threads", [1, None])
def test_several_actors_per_gpu_each_cap_their_memory_share(minilm_path, monkeypatch, torch_threads):
    """The GPU plan always sets torch_threads; the memory cap must apply as well (it sat in the
    thread setting's ``elif``, so two actors on one GPU could each grow into the other's memory).
    The CUDA device is faked (none here): the cap's calls are counted, the weights load on CPU."""
    import torch

    import pipeline.stages.encode as encode

    caps, loads = [], []
    real_load = ModelSource.load_model
    monkeypatch.setattr(encode, "resolve_device", lambda device: "cuda")
    monkeypatch.setattr(encode, "resolve_dtype", lambda dtype, device: "float32")
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda fraction, *a: caps.append(fraction))
    monkeypatch.setattr(
        ModelSource, "load_model", lambda self, **kw: loads.append(kw) or real_load(self, dtype="float32", device="cpu")
    )
    before = torch.get_num_threads()
    try:
        stage = EncodeStage(
            model=ModelSource(name_or_path=minilm_path),
            batch_size=4,
            device="cuda",
            torch_threads=torch_threads,
            memory_fraction=0.5,
        )
        stage.setup()
        assert caps == [0.5] and loads[0]["device"] == "cuda"
        if torch_threads:
            assert torch.get_num_threads() == torch_threads
        caps.clear()
        whole = EncodeStage(
            model=ModelSource(name_or_path=minilm_path), batch_size=4, device="cuda", memory_fraction=1.0
        )
        whole.setup()
        assert caps == []  # one actor per GPU: no cap
    finally:
        torch.set_num_threads(before)

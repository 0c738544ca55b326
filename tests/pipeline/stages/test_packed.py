"""Packed micro-batches (``--attention packed``): rows end to end, no padding, the same embeddings as
the model card's code. On CPU attention runs per row (torch's varlen kernel is CUDA-only)."""

import numpy as np
import pytest

from e5tools.parity import TOLERANCE, parity_error
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
    assert parity_error(ours, ref) <= TOLERANCE["float32"]  # xlmr_path: random weights


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
    with pytest.raises(ValueError, match="auto, padded, packed"):
        EncodeStage(model=ModelSource(name_or_path=minilm_path), batch_size=2, device="cpu", attention="flash")


class _FakeGpu:
    """No GPU here: torch.cuda's capability, name and bf16 answers are replaced by a GPU's (said so)."""

    def __init__(self, monkeypatch, capability):
        import torch

        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: f"FakeGPU sm{capability[0]}{capability[1]}")
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: capability >= (8, 0))


@pytest.mark.parametrize(
    "capability, dtype, reason",
    [
        ((9, 0), "bfloat16", None),
        ((8, 0), "float16", None),
        ((7, 5), "float16", "compute capability 8.0+; this GPU (FakeGPU sm75) is 7.5"),
        ((9, 0), "float32", "needs float16 or bfloat16, not float32"),
    ],
)
def test_packed_attention_needs_sm80_and_half_precision_on_cuda(monkeypatch, capability, dtype, reason):
    import torch

    from pipeline.stages.packed import packed_unavailable

    _FakeGpu(monkeypatch, capability)
    got = packed_unavailable(torch, "cuda", dtype)
    assert got == reason if reason is None else reason in got
    assert packed_unavailable(torch, "cpu", "float32") is None  # the CPU path is the parity path


def test_packed_on_a_gpu_without_flash_falls_back_to_padded_loudly(monkeypatch, minilm_path, caplog):
    """A T4 (sm75) actor asked for --attention packed: padded micro-batches and a warning, never the
    per-row attention loop. Nothing is loaded (construction is cheap), so no real GPU is touched."""
    import pipeline.stages.encode as encode

    _FakeGpu(monkeypatch, (7, 5))
    monkeypatch.setattr(encode, "resolve_device", lambda device: "cuda")
    stage = EncodeStage(model=ModelSource(name_or_path=minilm_path), batch_size=2, device="cuda", attention="packed")
    assert stage.attention == "padded" and stage.dtype == "float16"
    assert any(
        "--attention packed: flash varlen attention needs compute capability" in r.getMessage() for r in caplog.records
    )
    _FakeGpu(monkeypatch, (9, 0))
    assert (
        EncodeStage(
            model=ModelSource(name_or_path=minilm_path), batch_size=2, device="cuda", attention="packed"
        ).attention
        == "packed"
    )


@pytest.mark.parametrize(
    "capability, device, dtype, buckets, runs, why",
    [
        ((9, 0), "cuda", "bfloat16", None, "packed", "flash varlen attention runs here"),
        ((8, 0), "cuda", "float16", None, "packed", "flash varlen attention runs here"),
        ((7, 5), "cuda", "float16", None, "padded", "compute capability 8.0+"),  # a T4
        ((9, 0), "cuda", "float32", None, "padded", "needs float16 or bfloat16"),
        ((9, 0), "cuda", "bfloat16", (128, 512), "padded", "shape buckets pad to fixed shapes"),
        ((9, 0), "cpu", "float32", None, "padded", "not on CUDA (cpu)"),
    ],
)
def test_attention_auto_is_packed_exactly_where_its_fast_kernel_runs(
    monkeypatch, minilm_path, caplog, capability, device, dtype, buckets, runs, why
):
    """The new default. The capability is faked (no GPU here, said so); the choice is logged and is
    what the actor runs (and what its timeline's micro-batches report)."""
    import logging

    import torch

    import pipeline.stages.encode as encode
    from pipeline.stages.packed import planned_attention, resolve_attention

    _FakeGpu(monkeypatch, capability)
    chosen, reason = resolve_attention("auto", torch, device, dtype, buckets)
    assert chosen == runs and why in reason
    monkeypatch.setattr(encode, "resolve_device", lambda d: device)
    with caplog.at_level(logging.INFO, logger="pipeline.stages.encode"):
        stage = EncodeStage(model=ModelSource(name_or_path=minilm_path), batch_size=2, device=device, dtype=dtype,
                            shape_buckets=buckets)  # fmt: skip
    assert stage.attention == runs
    assert any(r.getMessage().startswith(f"--attention auto: {runs} (") for r in caplog.records)
    # the plan's expectation (the driver sees no capability): packed on CUDA in half precision
    expected = "packed" if device == "cuda" and dtype != "float32" and not buckets else "padded"
    assert planned_attention("auto", device, dtype, buckets) == expected
    assert planned_attention("padded", device, dtype, buckets) == "padded"


def test_auto_is_the_default_and_explicit_modes_stay(minilm_path):
    from pipeline.config import JobConfig

    assert JobConfig(inputs=("x",), output="y").attention == "auto"
    cpu = dict(model=ModelSource(name_or_path=minilm_path), batch_size=2, device="cpu")
    assert EncodeStage(**cpu).attention == "padded"  # auto on CPU
    assert EncodeStage(**cpu, attention="packed").attention == "packed"  # the CPU parity path, when asked
    assert EncodeStage(**cpu, attention="padded").attention == "padded"

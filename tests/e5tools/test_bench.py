"""The benchmark runs and its numbers are well-formed (not a timed test: no speed is asserted)."""

import json
import math

import pytest

from e5tools.bench import ROWS, make_corpus, run_benchmark
from tests.clirun import run_cli


@pytest.mark.unit
def test_corpus_is_real_text_with_a_length_mix():
    docs = make_corpus(300)
    assert len(docs) == 300 and docs == make_corpus(300)  # deterministic
    words = sorted(len(d.split()) for d in docs)
    assert words[0] < 40 < words[150] < 200 < words[-1]  # short, median and a long tail


@pytest.mark.unit
def test_unknown_row_is_a_usage_error():
    result = run_cli("bench", "--rows", "encode,warp")
    assert result.returncode == 2 and "unknown warp" in result.stderr


@pytest.mark.unit
@pytest.mark.parametrize("value", ["200000", "200000,50000", "a,b"])
def test_a_bad_cpu_side_size_pair_is_a_usage_error(value):
    result = run_cli("bench", "--cpu-side", value)
    assert result.returncode == 2 and "--cpu-side" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.unit
def test_cpu_side_from_an_install_without_the_rehearsals_is_a_one_line_usage_error(monkeypatch):
    """The wheel leaves e5tools.rehearsal out: --cpu-side says so instead of an ImportError traceback."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "e5tools.rehearsal" else real(name, *a)
    )
    result = run_cli("bench", "--cpu-side", "100,200")
    assert result.returncode == 2 and "checkout" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.rehearsal
def test_every_row_and_memory_check_are_well_formed(tmp_path):
    # --max-length 128: one shape bucket to compile (not three) and shorter compiled shapes; the rows are
    # the same code at any length (the GPU session runs them at 512)
    # --actors-per-gpu 2: what jobs/gpu_check.sh's actors step passes to the pipeline row
    report = run_benchmark(
        docs=24,
        device="cpu",
        rows=ROWS,
        memory_check=True,
        max_length=128,
        actors_per_gpu=2,
        pipeline_attention="packed",
        out_dir=str(tmp_path),
    )
    assert set(report["rows"]) == set(ROWS)
    for name, row in report["rows"].items():
        for key in ("seconds", "docs_per_s", "tokens_per_s", "fraction_of_peak"):
            assert math.isfinite(row[key]) and row[key] > 0, (name, key)
        assert row["docs"] == 24
    assert report["rows"]["reference"]["padding_overhead"] >= report["rows"]["encode"]["padding_overhead"] >= 0
    assert report["parity"]["encode_vs_reference_min_cosine"] >= 0.99999
    assert report["parity"]["encode_compiled_vs_reference_min_cosine"] >= 0.9999
    assert "any compiling, first batch) took" in report["rows"]["encode_compiled"]["notes"]
    assert report["parity"]["encode_packed_vs_reference_min_cosine"] >= 0.9999
    assert report["rows"]["encode_packed"]["padding_overhead"] == 0  # no padding at all
    assert report["parity"]["encode_buckets_vs_reference_min_cosine"] >= 0.9999
    assert "micro-batches by bucket on this corpus: " in report["rows"]["encode_buckets"]["notes"]
    for name in ("encode", "encode_compiled", "encode_packed", "encode_buckets"):  # random weights: the spread
        assert report["parity"][f"{name}_vs_reference_parity_error"] <= 1e-3, name
    assert report["memory_check"]["docs_4x"] == 96 and report["memory_check"]["ratio_4x_over_1x"] > 0
    margin = report["marginal"]  # the whole job at 24 and 96 docs: its marginal rate, start-up apart
    assert [s["records"] for s in margin["sizes"]] == [24, 96]
    assert margin["marginal_tokens_per_s"] is None or margin["marginal_tokens_per_s"] > 0
    assert margin["startup_parts_small_run"]["total"] > 0 and margin["attention"] == "packed"
    assert 0 < margin["device_busy_share"] <= 1 and margin["padding_share"] == 0  # packed: no padding
    assert set(report["ratios"]) >= {
        "encode/reference",
        "encode/st_encode",
        "encode_compiled/encode",
        "encode_packed/encode",
        "encode_buckets/encode",
        "pipeline/st_encode",
    }
    assert report["matmul_peak_flops"] > 0 and report["versions"]["ray"]
    assert "--actors-per-gpu 2" in report["rows"]["pipeline"]["notes"]
    assert "--attention packed" in report["rows"]["pipeline"]["notes"]  # gpu_check.sh's SUSTAINED_ATTENTION
    rates = report["tokenize"]["rates"]  # the CPU side on the same texts: raw tokenizer and both stages
    assert rates["raw_encode_batch"]["tokens"] == rates["tokenize_stage"]["tokens"] > 0
    assert rates["chunk_tokenize_stage"]["tokens"] >= rates["tokenize_stage"]["tokens"]  # nothing cut off
    assert set(report["tokenize"]["ratios"]) == {"tokenize_stage", "chunk_tokenize_stage"}
    assert json.loads((tmp_path / "bench.json").read_text())["rows"].keys() == report["rows"].keys()
    table = (tmp_path / "bench.md").read_text()
    assert all(f"| {name} |" in table for name in ROWS)


@pytest.mark.unit
def test_the_marginal_rate_is_the_tokens_a_larger_run_added_over_the_seconds_it_added():
    """The whole job's rate between two sizes: start-up cancels out (the retired 'steady state from
    file times' counted bursts of writes as the rate); start-up is what the rate does not explain."""
    from e5tools.bench import marginal

    def manifest(records, tokens, phases=None, encoder=None):
        run = {"phases": phases or {}, "timeline": {"encoder": encoder} if encoder else None}
        return {"rows_written": records, "tokens": tokens, "runs": [run]}

    phases = {"launched_before_s": 2.0, "model": 0.5, "plan": 0.2, "embed_started_at": 3.0,
              "first_encode_batch_at": 7.0}  # fmt: skip
    small = (20.0, manifest(1000, 150_000, phases))  # 20 s: 15 s start-up + 150k tokens at 30k/s
    large = (35.0, manifest(4000, 600_000, encoder={"padding_share": 0.1, "device_busy_share": 0.8,
                                                    "wait_share": 0.15, "attention": "padded"}))  # fmt: skip
    m = marginal(small, large)
    assert m["marginal_tokens_per_s"] == 30_000.0 and m["startup_s"] == 15.0
    assert (m["padding_share"], m["device_busy_share"], m["attention"]) == (0.1, 0.8, "padded")
    parts = m["startup_parts_small_run"]
    assert parts["total"] == 9.0 and parts["launch_and_imports"] == 2.0
    assert parts["pipeline_to_first_encoded_batch"] == 4.0 and parts["other_driver_steps"] == pytest.approx(2.3)
    assert [s["records"] for s in m["sizes"]] == [1000, 4000]
    assert marginal(large, large)["marginal_tokens_per_s"] is None  # no second size: no rate, not a guess


@pytest.mark.unit
def test_bucket_shares_show_where_micro_batches_land():
    import numpy as np

    from e5tools.bench import _padded_tokens, bucket_shares

    per_bucket: dict[int, int] = {}
    lengths = np.array([500] * 4 + [200] * 8 + [60] * 4)  # sorted micro-batches of 4: one 512, two 256, one 128
    slots = _padded_tokens(lengths, 4, 8, (128, 256, 512), per_bucket)
    assert per_bucket == {512: 1, 256: 2, 128: 1} and slots == 4 * (512 + 2 * 256 + 128)
    assert bucket_shares(per_bucket) == "128: 25%, 256: 50%, 512: 25%"

"""Rates with their source: the calibration's arithmetic checked on hand-computed cases, a real
calibration of the job's encode stage on CPU (in-process), staleness, a finished run's rate, and
the cost ranges the plan prints."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from pipeline.errors import UsageError
from pipeline.planning import calibration as cal
from pipeline.planning.estimate import CorpusEstimate, add_cost

pytestmark = pytest.mark.unit


def test_padding_share_by_hand():
    # lengths 10, 2, 7, 1 in one call, micro-batches of 2, longest first: [10, 7] and [2, 1]
    assert cal.padding_share([10, 2, 7, 1], batch_size=2, rows_per_call=4, pad_multiple=1) == pytest.approx(
        1 - 20 / (2 * 10 + 2 * 2)
    )
    # padded to multiples of 8: widths 16 and 8
    assert cal.padding_share([10, 2, 7, 1], 2, 4, 8) == pytest.approx(1 - 20 / (2 * 16 + 2 * 8))
    # two calls of two rows: [10, 2] and [7, 1] each one micro-batch
    assert cal.padding_share([10, 2, 7, 1], 2, 2, 1) == pytest.approx(1 - 20 / (2 * 10 + 2 * 7))


def test_a_real_calibration_of_the_encode_stage_on_cpu(minilm_path, tmp_path):
    from e5tools.sample_text import passages
    from pipeline.stages.model import ModelSource

    texts = [t for _, t in passages(200)]
    measured = cal.measure(
        ModelSource(name_or_path=minilm_path),
        texts,
        model_sha="sha256:test",
        prefix="passage: ",
        max_length=512,
        batch_size=16,
        rows_per_call=256,
        device="cpu",
        torch_threads=1,
        max_seconds=4,
        repeats=3,
    )
    assert measured.device_kind == "cpu" and measured.dtype == "float32" and len(measured.per_repeat) == 3
    median = sorted(measured.per_repeat)[1]
    assert measured.tokens_per_s == pytest.approx(median, rel=1e-3)
    assert measured.spread == pytest.approx(max(abs(r - median) for r in measured.per_repeat) / median, abs=1e-3)
    assert 0 < measured.padding_share < 1 and measured.sample_records == 200 and measured.seconds > 0
    assert measured.tokenize_cpu_s_per_m_tokens > 0 and measured.peak_memory_gb > 0
    assert measured.provenance().startswith(f"measured {measured.measured_at[:10]} on ")
    cal.save(measured, str(tmp_path / "c.json"), {})
    assert cal.load(str(tmp_path / "c.json"), {}) == measured


def _calibration(**kw) -> cal.Calibration:
    values = dict(
        measured_at="2026-12-01T10:00:00+00:00",
        device_kind="cuda",
        device_name="NVIDIA H100 80GB HBM3",
        model="intfloat/e5-base-v2",
        model_sha="git:" + "a" * 40,
        torch="2.13.0",
        cuda="12.8",
        driver="570.1",
        dtype="bfloat16",
        attention="padded",
        batch_size=512,
        max_length=512,
        threads=1,
        repeats=3,
        tokens_per_s=1_000_000.0,
        per_repeat=[950_000.0, 1_000_000.0, 1_100_000.0],
        spread=0.1,
        padding_share=0.2,
        peak_memory_gb=20.0,
        tokenize_cpu_s_per_m_tokens=1.5,
        sample_records=5000,
        sample_mean_tokens=120.0,
        setup_s=12.0,
        seconds=118.0,
    )
    return cal.Calibration(**{**values, **kw})


def test_a_stale_calibration_says_why_and_a_foreign_file_is_refused(tmp_path):
    c = _calibration()
    assert c.stale(model_sha="git:" + "a" * 40, torch_version="2.13.0", device_name=c.device_name) == []
    reasons = c.stale(model_sha="git:" + "b" * 40, torch_version="2.14.1", device_name="NVIDIA A100")
    assert [r.split()[0] for r in reasons] == ["model", "torch", "device"]
    (tmp_path / "x.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(UsageError, match="not a usable calibration file"):
        cal.load(str(tmp_path / "x.json"), {})
    with pytest.raises(UsageError, match="no calibration file.*--calibrate"):
        cal.load(str(tmp_path / "missing.json"), {})


def test_the_rate_of_a_finished_run_per_gpu():
    gpu = {"device": "cuda", "gpu_actors": 8, "actors_per_gpu": 2}
    runs = [
        {"status": "complete", "tokens": 30_000_000, "phases": {"embed": 10.0}, "run_id": "r1", "plan": gpu},
        {"status": "failed", "tokens": 900, "phases": {"embed": 1.0}, "run_id": "r2", "plan": gpu},
    ]
    rate = cal.run_rate(runs, "s3://b/out")
    assert rate.tokens_per_s == 750_000.0 and rate.source.startswith("from run r1 of s3://b/out") and rate.measured
    with pytest.raises(UsageError, match="no complete run"):
        cal.run_rate(runs[1:], "s3://b/out")


def test_a_small_update_is_passed_over_for_the_last_run_that_encoded_enough_and_said():
    """An --update that encoded 34 tokens measured its start-up, not a rate (it planned at 0 tokens/s)."""
    cpu = {"device": "cpu", "gpu_actors": 2, "actors_per_gpu": 1}
    full = {"status": "complete", "tokens": 200_000, "phases": {"embed": 20.0}, "run_id": "full", "plan": cpu}
    small = {"status": "complete", "tokens": 34, "phases": {"embed": 9.0}, "run_id": "small", "plan": cpu}
    rate = cal.run_rate([full, small], "out")
    assert rate.tokens_per_s == 5_000.0
    assert rate.source.startswith("from run full of out") and "run small encoded 34 tokens, too few" in rate.source
    with pytest.raises(UsageError, match=r"at least 10,000 tokens.*run small encoded 34.*--calibrate"):
        cal.run_rate([small], "out")


def test_cost_and_wall_time_come_as_a_range_from_the_spread():
    estimate = CorpusEstimate(
        shards=1, bytes=1, sampled_shards=1, sampled_records=1, records=1e9, rejected_share=0.0,
        mean_tokens=100.0, truncated_share=0.0, tokens_embedded=3.6e12, padding_share=0.2,
    )  # fmt: skip
    rate = cal.calibrated_rate(_calibration(tokens_per_s=1e6, spread=0.1, padding_share=0.2))
    add_cost(estimate, encoders=10, rate=rate, on_gpu=True, gpu_hour_price=2.0, calibrated_padding=0.2)
    # 3.6e12 tokens / (10 GPUs x 1e6 tokens/s) = 3.6e5 s = 100 h of wall, 1000 GPU-hours, 2000 at 2/h
    assert estimate.wall_hours == pytest.approx(100.0) and estimate.gpu_hours == pytest.approx(1000.0)
    assert estimate.cost == pytest.approx(2000.0)
    assert estimate.cost_range == pytest.approx((2000 / 1.1, 2000 / 0.9))
    assert estimate.rate_source.startswith("measured 2026-12-01 on NVIDIA H100")
    unmeasured = CorpusEstimate(**{**estimate.__dict__, "notes": []})
    add_cost(unmeasured, encoders=10, rate=cal.profile_rate(2e6), gpu_hour_price=2.0)
    assert "profile guess, unmeasured" in unmeasured.rate_source and any("calibrate" in n for n in unmeasured.notes)
    # a profile measured on a machine of its kind says so, and is still not this cluster's calibration
    sourced = CorpusEstimate(**{**estimate.__dict__, "notes": []})
    add_cost(sourced, encoders=10, rate=cal.profile_rate(1.36e6, "H200 profile: measured on one H200"))
    assert sourced.rate_source.startswith("H200 profile: measured on one H200; not this cluster")
    assert any("calibrate" in n for n in sourced.notes)
    # a corpus with less padding than the calibration's sample: more real tokens per slot
    lean = CorpusEstimate(**{**estimate.__dict__, "notes": [], "padding_share": 0.0})
    add_cost(lean, encoders=10, rate=rate, calibrated_padding=0.2)
    assert lean.rate_tokens_per_s == pytest.approx(10 * 1e6 / 0.8)


@pytest.mark.parametrize(
    "field,bad",
    [
        ("tokens_per_s", float("nan")),
        ("tokens_per_s", float("inf")),
        ("tokens_per_s", 0),
        ("tokens_per_s", -5.0),
        ("tokens_per_s", "fast"),
        ("spread", -3.0),
        ("padding_share", 1.5),
        ("batch_size", "512"),
        ("batch_size", True),
        ("dtype", "fp8"),
        ("attention", "sparse"),
        ("device_kind", "tpu"),
        ("per_repeat", []),
        ("per_repeat", [1.0, float("nan")]),
        ("model", None),
    ],
)
def test_a_calibration_file_with_a_field_out_of_range_is_refused_by_name(tmp_path, field, bad):
    good = asdict(_calibration())
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({**good, field: bad}))  # NaN and Infinity as JSON writes them
    with pytest.raises(UsageError, match=rf"not a usable calibration file.*{field.split('[')[0]}.*--calibrate"):
        cal.load(str(path), {})


def test_a_calibration_made_with_another_dtype_attention_or_batch_shape_is_stale():
    c = _calibration(dtype="bfloat16", attention="packed", batch_size=256, max_length=512)
    same = dict(dtype="bfloat16", attention="packed", batch_size=256, max_length=512)
    assert c.stale(model_sha=c.model_sha, torch_version=c.torch, device_name=None, **same) == []
    for key, now, said in [
        ("dtype", "float32", "dtype bfloat16 (now float32)"),
        ("attention", "padded", "attention packed (now padded)"),
        ("batch_size", 512, "batch size 256 (now 512)"),
        ("max_length", 128, "max length 512 (now 128)"),
    ]:
        assert c.stale(model_sha=c.model_sha, torch_version=c.torch, device_name=None, **{**same, key: now}) == [said]


def test_the_plan_refuses_a_calibration_that_does_not_describe_it_saying_each_difference():
    from types import SimpleNamespace

    c = _calibration()  # an H100, bf16, padded, 512 x 512
    gpu = SimpleNamespace(device="cuda", profile="H100", dtype="bfloat16", batch_size=512)
    kw = dict(model_sha=c.model_sha, attention="padded", max_length=512, torch_version=c.torch)
    cal.check_describes(c, "cal.json", gpu, **kw)  # it does
    cpu = SimpleNamespace(device="cpu", profile="cpu", dtype="float32", batch_size=512)
    with pytest.raises(UsageError, match=r"cal\.json was made with dtype bfloat16 \(now float32\); device NVIDIA H100"
                                         r" 80GB HBM3 \(now CPU\): it does not describe this plan"):  # fmt: skip
        cal.check_describes(c, "cal.json", cpu, **kw)
    with pytest.raises(UsageError, match=r"now H200 \(the plan's profile\)"):
        cal.check_describes(c, "cal.json", SimpleNamespace(**{**vars(gpu), "profile": "H200"}), **kw)

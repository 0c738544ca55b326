"""The GPU script set, rehearsed on CPU (tiny sizes): a GPU session must not be the first time it runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env():
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` is this venv's
    return env


@pytest.mark.unit
def test_profiled_batches_carry_padding_like_the_jobs():
    """All-ones masks let transformers drop the mask (flash attention), which the padded job path never runs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_profile", ROOT / "jobs" / "gpu_profile.py")
    gpu_profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_profile)
    ids, mask = gpu_profile.job_like_batch(64, 128, pad_id=0)
    lengths = mask.sum(1)
    assert ids.shape == mask.shape == (64, 128) and lengths[0] == 128 and lengths.min() >= 96
    assert (mask == 0).any() and ((ids == 0) == (mask == 0)).all()  # padded with the pad id, where masked


@pytest.mark.rehearsal
def test_without_cuda_and_without_rehearse_it_measures_nothing_and_says_so(tmp_path):
    done = subprocess.run(
        [sys.executable, "jobs/gpu_memory_check.py", "--out", str(tmp_path)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "no CUDA device" in done.stderr
    assert not (tmp_path / "memory.json").exists()


@pytest.mark.rehearsal
def test_gpu_check_script_rehearsed_on_cpu(tmp_path):
    """The steps of jobs/gpu_check.sh that run code of their own, once, at tiny sizes: the quick preset
    (first contact: versions, memory, parity, encode, the whole pipeline through `pipeline bench --rows
    pipeline`), the memory grid and the profile. The bench, actors and sustained steps are `pipeline
    bench` at other sizes, which tests/e5tools/test_bench.py rehearses through the same command: here the
    script's text is only parsed (bash -n), so a broken line in them still fails."""
    subprocess.run(["bash", "-n", "jobs/gpu_check.sh"], cwd=ROOT, check=True)
    env = _env() | {"DEVICE": "cpu", "STEPS": "quick versions memory profile", "OUT": str(tmp_path)}
    subprocess.run(["bash", "jobs/gpu_check.sh"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=900)
    quick = json.loads((tmp_path / "quick" / "quick.json").read_text())
    assert list(quick["steps"]) == ["versions", "calibrate", "memory", "parity", "encode", "pipeline"]
    assert quick["steps"]["calibrate"]["tokens_per_s"] > 0 and len(quick["steps"]["calibrate"]["per_repeat"]) == 3
    failed = {n: e.get("error") for n, e in quick["steps"].items() if not e["ok"]}
    assert not failed, failed
    assert len([p for p in (tmp_path / "quick").rglob("*") if p.is_file()]) <= 8  # what comes back from a device
    parity = quick["steps"]["parity"]
    errors = {k: v for k, v in parity.items() if k.endswith("_error")}
    # both models, both attention paths, each within the tolerance
    assert len(errors) == 4 and all(v <= parity["tolerance"] for v in errors.values()), parity
    assert {parity[f"minilm_real_{a}_ran"] for a in ("padded", "packed")} <= {"padded", "packed"}
    assert quick["steps"]["encode"]["packed_tokens_per_s"] > 0 and quick["steps"]["pipeline"]["tokens_per_s"] > 0
    assert "| pipeline | yes |" in (tmp_path / "quick" / "quick.md").read_text()
    assert "torch" in (tmp_path / "versions.txt").read_text()
    # memory: the job's ragged encode path against the planner's estimate
    report = json.loads((tmp_path / "memory" / "memory.json").read_text())
    assert [(r["batch"], r["length"]) for r in report["rows"]] == [(2, 16), (4, 16), (2, 32), (4, 32)]
    assert all(r["estimate_gb"] > 0 and r["oom_splits"] == 0 for r in report["rows"])
    assert "PYTORCH_CUDA_ALLOC_CONF" in report["allocator"]  # what the process has, recorded beside the peaks
    assert "| batch | length | reserved GB" in (tmp_path / "memory" / "memory.md").read_text()
    profile = json.loads((tmp_path / "profile" / "profile.json").read_text())
    assert len(profile["forward"]) == 4 and all(r["tokens_per_s"] > 0 for r in profile["forward"])
    assert profile["forward_masks"].startswith("job-like")  # not all-ones: the padded path's kernel is timed
    assert all(0 < r["real_tokens_per_s"] <= r["tokens_per_s"] for r in profile["forward"])
    for attention in ("padded", "packed"):  # the attention kernel that ran is named
        assert any("scaled_dot_product" in k for k in profile["profile"][attention]["attention_kernels"])
    assert not (tmp_path / "bench").exists() and not (tmp_path / "sustained").exists()  # steps as asked


@pytest.mark.rehearsal
def test_a_failing_quick_step_is_recorded_and_the_others_kept(tmp_path):
    """A device window may end or a step may break: what finished is on disk, the failure is a row."""
    done = subprocess.run(
        [sys.executable, "jobs/gpu_quick.py", "--rehearse", "--steps", "versions,pipeline", "--pipeline-docs", "0"]
        + ["--out", str(tmp_path)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    steps = json.loads((tmp_path / "quick.json").read_text())["steps"]
    assert steps["versions"]["ok"] and steps["versions"]["torch"]
    assert not steps["pipeline"]["ok"] and "--docs must be >= 1" in steps["pipeline"]["error"]
    assert "| pipeline | NO |" in (tmp_path / "quick.md").read_text()

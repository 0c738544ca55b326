"""The GPU script set, rehearsed on CPU (tiny sizes): a GPU session must not be the first time it runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.rehearsal

ROOT = Path(__file__).resolve().parents[2]


def _env():
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` is this venv's
    return env


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


def test_gpu_check_script_rehearsed_on_cpu(tmp_path):
    """The steps of jobs/gpu_check.sh that run code of their own, once, at tiny sizes. The bench step runs
    one row for its glue; the actors and sustained steps are `pipeline bench --rows pipeline` at other sizes
    (and --actors-per-gpu), which tests/e5tools/test_bench.py rehearses through the same `pipeline bench`:
    here the script's text is only parsed (bash -n), so a broken line in them still fails."""
    subprocess.run(["bash", "-n", "jobs/gpu_check.sh"], cwd=ROOT, check=True)
    env = _env() | {
        "DEVICE": "cpu",
        "DOCS": "40",
        "STEPS": "versions memory profile bench",
        "BENCH_ROWS": "reference",
        "OUT": str(tmp_path),
    }
    subprocess.run(["bash", "jobs/gpu_check.sh"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=900)
    assert "torch" in (tmp_path / "versions.txt").read_text()
    # memory: the job's ragged encode path against the planner's estimate
    report = json.loads((tmp_path / "memory" / "memory.json").read_text())
    assert [(r["batch"], r["length"]) for r in report["rows"]] == [(2, 16), (4, 16), (2, 32), (4, 32)]
    assert all(r["estimate_gb"] > 0 and r["oom_splits"] == 0 for r in report["rows"])
    assert "| batch | length | reserved GB" in (tmp_path / "memory" / "memory.md").read_text()
    profile = json.loads((tmp_path / "profile" / "profile.json").read_text())
    assert len(profile["forward"]) == 4 and all(r["tokens_per_s"] > 0 for r in profile["forward"])
    for attention in ("padded", "packed"):  # the attention kernel that ran is named
        assert any("scaled_dot_product" in k for k in profile["profile"][attention]["attention_kernels"])
    bench = json.loads((tmp_path / "bench" / "bench.json").read_text())
    # the encode row always runs beside the reference: it gives the token count the others report
    assert set(bench["rows"]) == {"reference", "encode"} and bench["rows"]["reference"]["docs"] == 40
    assert not (tmp_path / "actors1").exists() and not (tmp_path / "sustained").exists()  # steps as asked

"""The calibrated plan as users run it: `plan --calibrate` on this (GPU-less) machine's CPU path,
the plan reading the file and saying where its rate comes from, a stale calibration refused, and
`--from-run` taking a finished run's rate. Real processes (each its own local Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}


def cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *argv], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=900
    )


def test_calibrate_then_plan_with_it_refuse_it_stale_and_plan_from_a_run(tmp_path, minilm_path, tiny_e5_path):
    from e5tools.sample_text import passages

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for _, t in passages(300)))
    calibration = tmp_path / "cal.json"
    made = cli("plan", "--input", str(corpus), "--model", minilm_path, "--calibrate", "--calibration", str(calibration),
               "--calibrate-seconds", "6")  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    assert "calibrating on this node's CPU (the cluster has no GPU) for at most 6 s" in made.stderr
    measured = json.loads(calibration.read_text())
    assert measured["device_kind"] == "cpu" and measured["tokens_per_s"] > 0 and len(measured["per_repeat"]) == 3

    planned = cli("plan", "--input", str(corpus), "--model", minilm_path, "--calibration", str(calibration), "--json")
    assert planned.returncode == 0, planned.stderr[-3000:]
    estimate = json.loads(planned.stdout)["estimate"]
    assert estimate["rate_source"].startswith("measured ") and "3 repeats" in estimate["rate_source"]
    low, high = estimate["wall_hours_range"]
    assert low <= estimate["wall_hours"] <= high and estimate["encode_seconds"] > 0

    # the rest on a described cluster (the same 2-CPU node, no Ray to start): the live path is above
    described = ("--gpus", "0", "--cpus", "2")
    stale = cli("plan", "--input", str(corpus), "--model", tiny_e5_path, "--calibration", str(calibration), *described)
    assert stale.returncode == 2 and "does not describe this plan" in stale.stderr and "model sha256:" in stale.stderr

    guessed = cli("plan", "--input", str(corpus), "--model", minilm_path, "--gpus", "8", "--accelerator", "A100")
    assert guessed.returncode == 0 and "rate: profile guess, unmeasured" in guessed.stdout
    derived = cli("plan", "--input", str(corpus), "--model", minilm_path, "--gpus", "8", "--accelerator", "H100")
    assert derived.returncode == 0 and "rate: H100 profile: the H200's measured" in derived.stdout
    assert "not measured on an H100" in derived.stdout and "not this cluster" in derived.stdout

    out = tmp_path / "out"
    done = cli("run", "--input", str(corpus), "--output", str(out), "--model", minilm_path, "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    from_run = cli("plan", "--input", str(corpus), "--model", minilm_path, "--from-run", str(out), "--json", *described)
    assert from_run.returncode == 0, from_run.stderr[-3000:]
    run = json.loads((out / "_manifest.json").read_text())["runs"][-1]
    assert json.loads(from_run.stdout)["estimate"]["rate_source"].startswith(f"from run {run['run_id']} of {out}")

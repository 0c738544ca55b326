"""Is the plan honest? Calibrate on corpus A, plan corpus B (other lengths, other size) with that
calibration, run B, and compare the predicted encoding time and wall time with the actual ones.

    python -m e5tools.rehearsal.plan_honesty [--a 1500] [--b 800] [--seconds 30] [--json OUT]

Every step is the CLI as users run it (a subprocess each, its own local Ray cluster), on the real
MiniLM weights (E5's vocabulary). A is real short passages; B is documents of 1 to 6 of them (longer,
some truncated at 512). Actual encoding time: the run's wall time from its first encoded batch
to its end (the run record's ``wall_s - first_encode_batch_at``); the plan predicts the encoder's
time for the corpus's tokens, plus the encoder's start (the calibration's ``setup_s``) for the wall.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from e5tools.demo import offline_model_path
from e5tools.sample_text import passages

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}


def write_corpora(root: Path, a: int, b: int, seed: int = 0) -> tuple[Path, Path]:
    texts = [t for _, t in passages(max(3000, a + b))]
    rng = random.Random(seed)
    (root / "A").mkdir(parents=True)
    (root / "B").mkdir(parents=True)
    with open(root / "A" / "a.jsonl", "w") as f:
        for i, t in enumerate(texts[:a]):
            f.write(json.dumps({"id": f"a{i}", "text": t}) + "\n")
    with open(root / "B" / "b.jsonl", "w") as f:
        for i in range(b):
            f.write(json.dumps({"id": f"b{i}", "text": " ".join(rng.sample(texts, rng.randint(1, 6)))}) + "\n")
    return root / "A", root / "B"


def _cli(*argv: str) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *argv], env=ENV, capture_output=True, text=True, timeout=1800
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:2]} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - t0, done


def measure(root: Path, *, a: int, b: int, seconds: float) -> dict:
    model = offline_model_path()
    corpus_a, corpus_b = write_corpora(root, a, b)
    calibration = root / "calibration.json"
    cost_s, _ = _cli(
        "plan", "--input", str(corpus_a), "--model", model, "--calibrate", "--calibration", str(calibration),
        "--calibrate-seconds", str(seconds),
    )  # fmt: skip
    measured = json.loads(calibration.read_text())
    _, planned = _cli("plan", "--input", str(corpus_b), "--model", model, "--calibration", str(calibration), "--json")
    estimate = json.loads(planned.stdout)["estimate"]
    out = root / "out-b"
    _cli("run", "--input", str(corpus_b), "--output", str(out), "--model", model, "--no-progress")
    run = json.loads((out / "_manifest.json").read_text())["runs"][-1]
    actual_encode = run["wall_s"] - run["phases"]["first_encode_batch_at"]
    predicted_encode = estimate["encode_seconds"]
    predicted_wall = predicted_encode + measured["setup_s"]
    return {
        "calibration": {
            "corpus_a_records": a,
            "tokens_per_s": measured["tokens_per_s"],
            "spread": measured["spread"],
            "per_repeat": measured["per_repeat"],
            "padding_share": measured["padding_share"],
            "seconds_inside": measured["seconds"],
            "command_seconds": round(cost_s, 1),
            "bound_seconds": seconds,
        },
        "plan_b": {
            "records": estimate["records"],
            "tokens_embedded": estimate["tokens_embedded"],
            "padding_share": estimate["padding_share"],
            "predicted_encode_s": round(predicted_encode, 1),
            "predicted_range_h": estimate["wall_hours_range"],
            "predicted_wall_s": round(predicted_wall, 1),
        },
        "run_b": {
            "tokens": run["tokens"],
            "wall_s": run["wall_s"],
            "first_encode_batch_at": run["phases"]["first_encode_batch_at"],
            "actual_encode_s": round(actual_encode, 1),
        },
        "error_encode": round(predicted_encode / actual_encode - 1, 3),
        "error_wall": round(predicted_wall / run["wall_s"] - 1, 3),
        "token_estimate_error": round(estimate["tokens_embedded"] / run["tokens"] - 1, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", type=int, default=1500)
    parser.add_argument("--b", type=int, default=800)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="plan-honesty-") as tmp:
        result = measure(Path(tmp), a=args.a, b=args.b, seconds=args.seconds)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

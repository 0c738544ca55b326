"""Whole ``e5-embed run`` jobs as dev tools run them: the command line, and a run in a subprocess
with a sampler beside it (memory, CPU). Shared by the benchmark, the scale rehearsal and the CPU
accounting, so none of them imports another for it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path


def job_argv(corpus: str | Path, out: str | Path, model: str, *extra: str) -> list[str]:
    """``python -m pipeline run`` over ``corpus`` into ``out`` with ``model``, no progress bars."""
    cmd = [sys.executable, "-m", "pipeline", "run", "--input", str(corpus), "--output", str(out)]
    return cmd + ["--model", model, "--no-progress", *extra]


def run_sampled(
    cmd: list[str], env: dict[str, str], memory_mb: Callable[[int], float], *, interval_s: float
) -> tuple[float, str, float]:
    """Run ``cmd``; (seconds, stdout, the peak of ``memory_mb(pid)`` sampled every ``interval_s``).
    A failed run raises with the end of its stderr."""
    peak = [0.0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], memory_mb(proc.pid))
            done.wait(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline run failed ({proc.returncode}): {stderr[-3000:]}")
    return seconds, stdout, peak[0]

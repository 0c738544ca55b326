"""`bash jobs/gpu_check.sh --quick` ignored the flag and ran the 30-minute full check on whatever
device it found; on a 15-minute device lease that spends the whole window. It refuses arguments."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
@pytest.mark.parametrize("argv", [["--quick"], ["quick"], ["--help"]])
def test_the_gpu_check_refuses_what_it_does_not_understand(tmp_path, argv):
    done = subprocess.run(
        ["bash", "jobs/gpu_check.sh", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")},
    )  # fmt: skip
    assert done.returncode == 2 and "takes no arguments" in done.stderr and "STEPS=quick" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing ran

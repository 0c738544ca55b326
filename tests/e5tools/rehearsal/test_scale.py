"""The scale rehearsal runs end to end at a tiny size and reports every step (not a timed test)."""

import json

import pytest

from e5tools.rehearsal.scale import main

pytestmark = pytest.mark.rehearsal


def test_tiny_rehearsal_reports_every_step(tmp_path):
    assert (
        main(
            [
                "--out",
                str(tmp_path),
                "--records",
                "600",
                "--curve-shards",
                "6",
                "--curve-files",
                "3",
                "--shards",
                "30",
                "--files-records",
                "600",
                "--rows-per-file",
                "60",
                "--runs",
                "7",
                "--s3-objects",
                "50",
                "--cpu-side-records",
                "300,1200",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "scale.json").read_text())
    (records,) = report["records"]
    assert records["rows_embedded"] == 600 and records["driver_peak_mb"] > 0
    assert records["phases"]["embed"] > 0 and records["phases"]["first_encode_batch_at"] > 0
    (files,) = report["files"]
    assert files["data_files"] == 10 and files["shards"] == 30
    assert report["resume"]["noop"]["manifest_runs"] == 1  # a no-op records no run
    assert report["resume"]["after_deleting_10pct"]["rows_embedded"] == 60  # one deleted file redone
    assert report["manifest"]["runs"] == 7 and report["manifest"]["input_shards"] == 30
    assert report["duplicates"]["rows"] == 600 and report["listing"]["objects"] == 50
    small, large = report["cpu_side"]["runs"]
    assert (small["records"], large["records"]) == (300, 1200) and large["tokens"] > small["tokens"]
    for run in (small, large):  # every role's processes were found and sampled
        assert all(run["cpu_s_by_role"][role] > 0 for role in ("encode", "tokenize", "io", "driver", "runtime"))
        # the roles are the machine's busy CPU while the job ran (less the sampler's own), and the
        # per-process samples explain most of it
        assert sum(run["cpu_s_by_role"].values()) == pytest.approx(run["job_cpu_s"], abs=0.05)
        assert run["job_cpu_s"] <= 1.05 * (run["machine_busy_cpu_s"] - run["sampler_cpu_s"]) + 0.05
        # the share of the machine's busy CPU the job's sampled processes explain: other work on the machine
        # (a CI runner's) lowers it, so only the bound that cannot move is asserted here; the benchmark
        # report flags a share under 90% (docs/benchmarks.md)
        assert 0 < run["accounted"] <= 1.05
    # at this size the CPU between the two runs is start-up noise: the ratio may be unmeasurable (None), never a crash
    assert "marginal_ratio" in report["cpu_side"] and "Marginal whole job" in (tmp_path / "scale.md").read_text()
    assert "Records grow" in (tmp_path / "scale.md").read_text()

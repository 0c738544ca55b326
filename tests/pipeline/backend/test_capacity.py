"""Waiting for GPUs on an autoscaling cluster.

The cluster's GPU count over time is injected (GPU nodes joining cannot happen here); the
autoscaler request goes to the real local Ray cluster's GCS.
"""

import pytest

from pipeline.backend.capacity import GpuCapacity
from pipeline.config import JobConfig
from pipeline.errors import JobError, UsageError
from pipeline.runner import run_job


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.mark.integration
def test_waits_until_enough_gpus_joined_then_withdraws_its_request(ray_cluster):
    seen = iter([0, 1, 1, 3])
    clock = Clock()
    with GpuCapacity(
        min_gpus=2, timeout_s=60, poll_s=5, gpus=lambda: next(seen), sleep=clock.sleep, clock=clock
    ) as capacity:
        assert capacity.wait() == 3
        assert capacity.requested and clock.now == 15
    assert not capacity.requested


@pytest.mark.integration
def test_no_wait_when_the_gpus_are_there_or_none_are_asked_for(ray_cluster):
    with GpuCapacity(min_gpus=2, timeout_s=60, gpus=lambda: 2) as capacity:
        assert capacity.wait() == 2 and not capacity.requested
    with GpuCapacity(min_gpus=0, timeout_s=60, gpus=lambda: pytest.fail("not asked")) as capacity:
        assert capacity.wait() == 0


@pytest.mark.integration
def test_times_out_with_a_clear_error(ray_cluster):
    clock = Clock()
    capacity = GpuCapacity(min_gpus=4, timeout_s=30, poll_s=10, gpus=lambda: 1, sleep=clock.sleep, clock=clock)
    with pytest.raises(JobError, match=r"has 1 GPU\(s\) after waiting 30 s for --min-gpus 4"), capacity:
        capacity.wait()
    assert not capacity.requested


@pytest.mark.integration
def test_job_on_a_cluster_without_gpus_fails_after_the_wait(ray_cluster, tmp_path, minilm_path):
    """Real local cluster (no GPU): --max-gpus implies waiting for one GPU, and none comes."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("one line\n")
    config = JobConfig(
        inputs=(str(corpus),), output=str(tmp_path / "out"), model=minilm_path, progress=False, max_gpus=8, gpu_wait_s=1
    )
    assert config.gpus_to_wait_for == 1
    with pytest.raises(JobError, match=r"has 0 GPU\(s\) after waiting 1 s"):
        run_job(config)
    assert not list((tmp_path / "out").glob("*.parquet"))


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"min_gpus": 4, "max_gpus": 2}, "--min-gpus 4 is more than --max-gpus 2"),
        ({"max_gpus": 0}, "--max-gpus must be an integer"),
        ({"gpu_wait_s": 0}, "--gpu-wait-s must be a number of seconds > 0"),
    ],
)
@pytest.mark.unit
def test_bad_gpu_options_are_usage_errors(bad, message):
    with pytest.raises(UsageError, match=message):
        JobConfig(inputs=("a",), output="b", **bad)

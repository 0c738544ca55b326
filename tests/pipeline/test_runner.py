"""The runner's cheap checks, before any Ray work (no cluster needed)."""

import pytest

from pipeline.config import JobConfig
from pipeline.errors import UsageError
from pipeline.planning.locations import check_locations, check_shared_paths
from pipeline.planning.plan import ClusterSpec

pytestmark = pytest.mark.unit


def test_local_paths_on_a_multi_node_cluster_need_the_shared_flag(tmp_path):
    config = JobConfig(inputs=("s3://b/in/",), output=str(tmp_path / "out"))
    check_shared_paths(config, ClusterSpec(gpus=0, cpus=4, nodes=1))
    with pytest.raises(UsageError, match="2 nodes but .*out is a local path"):
        check_shared_paths(config, ClusterSpec(gpus=0, cpus=4, nodes=2))
    check_shared_paths(config.replace(shared_local_path=True), ClusterSpec(gpus=0, cpus=4, nodes=2))
    check_shared_paths(config.replace(output="s3://b/out/"), ClusterSpec(gpus=0, cpus=4, nodes=8))


def test_nesting_is_checked_on_normalised_uris_and_pattern_parents():
    with pytest.raises(UsageError, match="lies inside --input"):
        check_locations(JobConfig(inputs=("s3a://b/data/*.jsonl",), output="s3://b/data/emb/"))
    with pytest.raises(UsageError, match="lies inside --output"):
        check_locations(JobConfig(inputs=("s3://b/out/x/",), output="s3://b/out"))
    check_locations(JobConfig(inputs=("s3://b/data/",), output="s3://b/database/"))  # a prefix, not a folder


def test_an_output_reached_through_a_symlink_into_the_input_is_refused(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "corpus")
    with pytest.raises(UsageError, match="lies inside --input"):
        check_locations(JobConfig(inputs=(str(tmp_path / "corpus"),), output=str(tmp_path / "link" / "emb")))


def test_the_pipeline_error_survives_a_failure_to_record_it(tmp_path, minilm_path, monkeypatch):
    """(Was a scenario test through Ray.) The pipeline failed, then reading the output to record the
    failed run failed too: both are reported, the pipeline's error first and chained."""
    from pipeline.backend.session import PipelineFailed
    from pipeline.errors import JobError
    from pipeline.io.counters import Counters
    from pipeline.ledger.output import OutputState
    from pipeline.runner import _record_failure
    from tests.local_jobs import Job, write_shard

    job = Job(tmp_path, minilm_path)
    write_shard(job.corpus / "a.jsonl", [(f"d{i}", f"record number {i}") for i in range(4)])
    output, _ = job.begin()
    run = output.new_record({})
    cause = RuntimeError("encode exploded (injected)")
    try:
        raise PipelineFailed("RuntimeError: encode exploded (injected)", Counters(), refused=False) from cause
    except PipelineFailed as e:
        failed = e

    def store_gone(self, metadata):
        raise OSError("the store went away while the run was recorded (injected)")

    monkeypatch.setattr(OutputState, "reconcile", store_gone)
    with pytest.raises(JobError) as caught:
        _record_failure(output, run, failed)
    message = str(caught.value)
    assert message.startswith("pipeline failed: RuntimeError: encode exploded") and "store went away" in message
    assert caught.value.__cause__ is cause


def test_a_failed_pipeline_is_recorded_then_exit_2_for_a_refusal_and_1_otherwise(tmp_path, minilm_path):
    import json

    from pipeline.backend.session import PipelineFailed
    from pipeline.errors import JobError
    from pipeline.io.counters import Counters
    from pipeline.runner import _record_failure
    from tests.local_jobs import Job, write_shard

    job = Job(tmp_path, minilm_path)
    write_shard(job.corpus / "a.jsonl", [(f"d{i}", f"record number {i}") for i in range(4)])
    for refused, raised in ((True, UsageError), (False, JobError)):
        output, _ = job.begin()
        run = output.new_record({})
        with pytest.raises(raised, match="pipeline failed: boom") as caught:
            _record_failure(output, run, PipelineFailed("boom", Counters(), refused=refused))
        assert type(caught.value) is raised  # UsageError is not a JobError: exit 2, not 1
        runs = json.loads((job.out / "_manifest.json").read_text())["runs"]
        assert (runs[-1]["status"], runs[-1]["error"]) == ("failed", "boom")

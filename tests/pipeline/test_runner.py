"""The runner's cheap checks, before any Ray work (no cluster needed)."""

import pytest

from pipeline.config import JobConfig
from pipeline.errors import UsageError
from pipeline.planning.plan import ClusterSpec
from pipeline.runner import check_locations, check_shared_paths

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

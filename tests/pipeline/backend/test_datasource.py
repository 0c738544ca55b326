"""The Ray Data datasource shell: read tasks over groups of shards."""

import pytest

from pipeline.backend.datasource import ShardDatasource
from pipeline.io.listing import list_shards

pytestmark = pytest.mark.unit


def test_datasource_makes_one_task_per_large_shard(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.txt").write_text("a\n")
    source = ShardDatasource(shards=list_shards([str(tmp_path)], {}))
    assert len(source.get_read_tasks(3)) == 3
    assert len(source.get_read_tasks(1)) == 1

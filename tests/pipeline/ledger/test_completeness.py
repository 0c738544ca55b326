"""The proof behind _SUCCESS: each listed shard read to its end and covered exactly once."""

import pytest

from pipeline.io.shard import Shard
from pipeline.ledger.completeness import fully_covered, prove
from pipeline.ledger.shard_log import ShardRecord

pytestmark = pytest.mark.unit


def shard(path, size=10, version="v1"):
    return Shard(path, path, size, "jsonl", None, "file", version)


def record(path, rows, size=10, version="v1", remainder=None):
    return ShardRecord(path=path, size=size, version=version, rows=rows, remainder=remainder)


def test_exact_coverage_proves_complete():
    shards = [shard("a"), shard("b"), shard("empty")]
    records = {"a": record("a", 5), "b": record("b", 3), "empty": record("empty", 0)}
    proof = prove(shards, records, [{"a": [(0, 3)]}, {"a": [(3, 5)], "b": [(0, 3)]}], allow_remainders=False)
    assert proof.ok and proof.describe() == ""
    assert fully_covered(shards[0], records["a"], {"a": [(0, 5)]})
    assert fully_covered(shards[2], records["empty"], {})


def test_every_gap_is_named():
    shards = [shard("a"), shard("b"), shard("c"), shard("d", version="v2")]
    records = {"a": record("a", 5), "c": record("c", 2), "d": record("d", 1)}  # b never finished; d read at v1
    files = [{"a": [(0, 2)]}, {"a": [(1, 4)]}, {"c": [(0, 3)]}, {"gone": [(0, 1)]}]
    proof = prove(shards, records, files, allow_remainders=False)
    assert not proof.ok
    assert proof.unread == ["b", "d"]
    assert proof.missing == {"a": 1}  # row 4
    assert proof.overlapping == {"a": 1}  # row 1 in two files
    assert proof.extra == {"gone": 1, "c": 1}  # an unlisted source; a row past c's end
    text = proof.describe()
    for word in (
        "not read to their end: b, d",
        "missing from the output: a (1)",
        "more than one file: a (1)",
        "not current input rows",
    ):
        assert word in text


def test_a_remainder_fails_unless_allowed():
    shards = [shard("z")]
    records = {"z": record("z", 4, remainder="gzip stream ends before its end-of-stream marker (truncated)")}
    files = [{"z": [(0, 4)]}]
    refused = prove(shards, records, files, allow_remainders=False)
    assert (
        not refused.ok and "--skip-corrupt-remainders" in refused.describe() and "z after row 4" in refused.describe()
    )
    accepted = prove(shards, records, files, allow_remainders=True)
    assert accepted.ok and [r.path for r in accepted.skipped_remainders] == ["z"]

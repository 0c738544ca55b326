"""Exact record totals from Parquet footers, for progress in records."""

import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io.listing import list_shards
from pipeline.io.record_counts import exact_rows

pytestmark = pytest.mark.unit


def _parquet(path, rows):
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(rows)]}), path, row_group_size=5)


def test_footers_give_the_exact_total(tmp_path):
    for i, n in enumerate([0, 1, 17, 40]):
        _parquet(tmp_path / f"p{i}.parquet", n)
    assert exact_rows({}, list_shards([str(tmp_path)], {}), workers=3) == 58


def test_no_total_unless_every_shard_is_parquet(tmp_path):
    _parquet(tmp_path / "a.parquet", 3)
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n')
    assert exact_rows({}, list_shards([str(tmp_path)], {})) is None
    assert exact_rows({}, []) is None


def test_a_stop_gives_no_total(tmp_path):
    _parquet(tmp_path / "a.parquet", 3)
    stop = threading.Event()
    stop.set()
    assert exact_rows({}, list_shards([str(tmp_path)], {}), stop=stop) is None


def test_an_unreadable_footer_raises(tmp_path):
    _parquet(tmp_path / "a.parquet", 3)
    (tmp_path / "b.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(Exception, match="(?i)parquet|magic"):
        exact_rows({}, list_shards([str(tmp_path)], {}))


def test_a_stop_mid_count_reads_no_further_footer(tmp_path, monkeypatch):
    for i in range(20):
        _parquet(tmp_path / f"p{i:02d}.parquet", 2)
    stop = threading.Event()
    reads = []

    def footer_rows(options, shard):  # the first read asks the count to stop (as the run ending would)
        reads.append(shard.path)
        stop.set()
        return 2

    monkeypatch.setattr("pipeline.io.record_counts._stored_rows", footer_rows)
    assert exact_rows({}, list_shards([str(tmp_path)], {}), workers=1, stop=stop) is None
    assert len(reads) == 1


def test_the_footer_readers_are_daemons(tmp_path, monkeypatch):
    """A footer read that hangs (an S3 request in retries) must not hold up the driver's exit."""
    _parquet(tmp_path / "a.parquet", 2)
    seen = []

    def footer_rows(options, shard):
        seen.append(threading.current_thread().daemon)
        return 2

    monkeypatch.setattr("pipeline.io.record_counts._stored_rows", footer_rows)
    assert exact_rows({}, list_shards([str(tmp_path)], {})) == 2 and seen == [True]

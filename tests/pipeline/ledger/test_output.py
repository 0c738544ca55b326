import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io import coverage, schemas
from pipeline.io.layout import CHUNK
from pipeline.io.sink import file_stats
from pipeline.io.sink import put_file as _put_file
from pipeline.io.storage import Storage
from pipeline.ledger.output import OutputState


def put_file(storage, folder, table, metadata, stats):
    """Publish a test file whose every source is at version ``1:v``."""
    return _put_file(storage, folder, table, metadata, stats, {s: "1:v" for s in set(table["source"].to_pylist())})


def data_table(source, rows, dim=4):
    n = len(rows)
    emb = pa.FixedSizeListArray.from_arrays(pa.array([0.5] * (n * dim), pa.float32()), dim)
    return pa.Table.from_arrays(
        [
            pa.array([f"{source}:{r}" for r in rows]),
            emb,
            pa.array([3] * n, pa.int32()),
            pa.array([False] * n),
            pa.array([source] * n),
            pa.array(rows, pa.int64()),
            pa.array([bytes([r % 256]) * 16 for r in rows], pa.binary(16)),
        ],
        schema=schemas.output_schema(dim),
    )


def chunk_table(source, rows, windows=3, dim=4):
    """A chunked data file's rows: ``windows`` rows per record, in text order."""
    keys = [(r, c) for r in rows for c in range(windows)]
    n = len(keys)
    emb = pa.FixedSizeListArray.from_arrays(pa.array([0.5] * (n * dim), pa.float32()), dim)
    return pa.Table.from_arrays(
        [
            pa.array([f"{source}:{r}" for r, _ in keys]),
            pa.array([c for _, c in keys], pa.int32()),
            pa.array([10 * c for _, c in keys], pa.int64()),
            pa.array([10 * c + 9 for _, c in keys], pa.int64()),
            emb,
            pa.array([5] * n, pa.int32()),
            pa.array([False] * n),
            pa.array([source] * n),
            pa.array([r for r, _ in keys], pa.int64()),
            pa.array([bytes([r % 256]) * 16 for r, _ in keys], pa.binary(16)),
        ],
        schema=schemas.chunk_output_schema(dim),
    )


@pytest.mark.unit
def test_coverage_ranges_and_digest_are_order_independent():
    t = data_table("s", [5, 1, 2, 3, 9])
    assert coverage.ranges_of(t) == {"s": [(1, 4), (5, 6), (9, 10)]}
    shuffled = t.take([4, 3, 2, 1, 0])
    assert coverage.digest(coverage.ranges_of(t)) == coverage.digest(coverage.ranges_of(shuffled))
    assert coverage.overlap([{"s": [(0, 5)]}, {"s": [(3, 8)]}]) == 2
    assert coverage.intersect({"s": [(0, 5), (7, 9)]}, {"s": [(3, 8)]}) == {"s": [(3, 5), (7, 8)]}


@pytest.mark.unit
def test_reconcile_repairs_overlapping_files(tmp_path):
    storage = Storage(str(tmp_path))
    meta = {"model": "m"}
    for rows in ([0, 1, 2, 3], [2, 3, 4, 5], [4, 5]):  # overlaps: 2,3 then 4,5 (fully covered)
        t = data_table("s", rows)
        put_file(storage, "", t, meta, file_stats(t))
    totals = OutputState(storage).reconcile(meta)
    files = sorted(tmp_path.glob("part-*.parquet"))
    got = sorted(r for f in files for r in pq.read_table(f)["row"].to_pylist())
    assert got == [0, 1, 2, 3, 4, 5]  # every row once
    assert totals.counters.rows_written == 6 and totals.counters.tokens == 18 and totals.repaired_files >= 1
    for f in files:  # footers still describe their files
        table = pq.read_table(f)
        assert coverage.decode(table.schema.metadata[schemas.COVERAGE_KEY]) == coverage.ranges_of(table)
        assert json.loads(table.schema.metadata[schemas.STATS_KEY])["rows"] == table.num_rows


@pytest.mark.unit
def test_reconcile_repairs_a_row_twice_within_one_file(tmp_path):
    storage = Storage(str(tmp_path))
    t = data_table("s", [0, 1, 1, 2, 3])
    put_file(storage, "", t, {}, file_stats(t))
    put_file(storage, "", data_table("s", [4, 5]), {}, file_stats(data_table("s", [4, 5])))
    totals = OutputState(storage).reconcile({})
    rows = sorted(r for f in tmp_path.glob("part-*.parquet") for r in pq.read_table(f)["row"].to_pylist())
    assert rows == [0, 1, 2, 3, 4, 5] and totals.counters.rows_written == 6 and totals.repaired_files == 1


@pytest.mark.unit
def test_chunked_files_count_records_and_windows_and_repair_whole_records(tmp_path):
    storage = Storage(str(tmp_path))
    a = chunk_table("s", [0, 1, 2])
    doubled = pa.concat_tables([chunk_table("s", [3, 4]), chunk_table("s", [4])])  # record 4 twice in a file
    assert coverage.ranges_of(a) == {"s": [(0, 3)]}  # records, not windows
    assert coverage.overlap([coverage.ranges_of(doubled)]) == 1
    stats = file_stats(a)
    assert stats == {"rows": 3, "chunks": 9, "tokens": 45, "truncated": 0}
    for t in (a, doubled, chunk_table("s", [2, 3])):  # the last overlaps both
        put_file(storage, "", t, {}, file_stats(t))
    totals = OutputState(storage).reconcile({})
    tables = [pq.read_table(f) for f in tmp_path.glob("part-*.parquet")]
    keys = sorted((r, c) for t in tables for r, c in zip(t["row"].to_pylist(), t["chunk"].to_pylist()))
    assert keys == [(r, c) for r in range(5) for c in range(3)]  # every window of every record once
    assert totals.counters.rows_written == 5 and totals.counters.chunks == 15 and totals.repaired_files >= 1
    for t in tables:  # footers still describe their files
        assert json.loads(t.schema.metadata[schemas.STATS_KEY])["chunks"] == t.num_rows


@pytest.mark.unit
def test_duplicate_ids_in_chunked_files_count_records_not_windows(tmp_path):
    from pipeline.ledger.duplicates import find_duplicate_ids

    storage = Storage(str(tmp_path))
    a = chunk_table("s", [0, 1])
    b = chunk_table("t", [0]).set_column(0, "id", pa.array(["s:1"] * 3))  # another record with id s:1
    paths = [put_file(storage, "", t, {}, file_stats(t)) for t in (a, b)]
    assert find_duplicate_ids(storage, paths[:1], 2, layout=CHUNK).duplicate_ids == 0
    report = find_duplicate_ids(storage, paths, 3, layout=CHUNK)
    assert report.duplicate_ids == 1 and report.examples == ["s:1"]


@pytest.mark.unit
def test_rows_of_a_new_shard_version_never_take_a_stale_files_name(tmp_path):
    """--update rewrites a shard's rows at its new version while the stale file is still there: the
    same (source, row) ranges at another version must not overwrite it (and then be deleted with it)."""
    storage, t = Storage(str(tmp_path)), data_table("s", [0, 1, 2])
    old = _put_file(storage, "", t, {}, file_stats(t), {"s": "10:etag-1"})
    new = _put_file(storage, "", t, {}, file_stats(t), {"s": "10:etag-2"})
    assert old != new and len(list(tmp_path.glob("part-*.parquet"))) == 2
    assert _put_file(storage, "", t, {}, file_stats(t), {"s": "10:etag-2"}) == new  # a retry: same name


@pytest.mark.unit
def test_retried_write_of_same_rows_overwrites_the_same_name(tmp_path):
    storage = Storage(str(tmp_path))
    t = data_table("s", [0, 1, 2])
    a = put_file(storage, "", t, {}, file_stats(t))
    b = put_file(storage, "", t.take([2, 0, 1]), {}, file_stats(t))
    assert a == b and len(list(tmp_path.glob("part-*.parquet"))) == 1
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


@pytest.mark.unit
def test_duplicate_ids_are_counted_with_examples(tmp_path):
    from pipeline.ledger.duplicates import find_duplicate_ids

    storage = Storage(str(tmp_path))
    a, b = data_table("s", [0, 1, 2]), data_table("t", [0, 1])
    b = b.set_column(0, "id", pa.array(["s:1", "s:2"]))  # same ids as two rows of a
    paths = [put_file(storage, "", t, {}, file_stats(t)) for t in (a, b)]
    report = find_duplicate_ids(storage, paths, 5)
    assert report.duplicate_ids == 2 and sorted(report.examples) == ["s:1", "s:2"]
    assert find_duplicate_ids(storage, paths[:1], 3).duplicate_ids == 0


@pytest.mark.integration
def test_duplicate_ids_on_the_cluster_path(ray_cluster, tmp_path):
    from pipeline.backend.duplicates import duplicate_ids_on_cluster

    storage = Storage(str(tmp_path))
    a = data_table("s", [0, 1, 2])
    b = data_table("t", [0]).set_column(0, "id", pa.array(["s:0"]))
    paths = [put_file(storage, "", t, {}, file_stats(t)) for t in (a, b)]
    report = duplicate_ids_on_cluster(storage, paths, rows=4)
    assert report.duplicate_ids == 1 and report.examples == ["s:0"]
    chunked = [put_file(storage, "c", t, {}, file_stats(t)) for t in (chunk_table("s", [0, 1]), chunk_table("t", [5]))]
    chunked.append(put_file(storage, "c", chunk_table("u", [1]).set_column(0, "id", pa.array(["s:1"] * 3)), {}, {}))
    # one aggregation for both: windows sharing their record's id (s:0's) count once, a real repeat (s:1) is found
    report = duplicate_ids_on_cluster(storage, chunked, CHUNK, 4)
    assert report.duplicate_ids == 1 and report.examples == ["s:1"]


@pytest.mark.unit
def test_a_multi_input_output_made_before_common_root_ids_is_refused_not_mixed(tmp_path):
    """Derived ids of several inputs are relative to their common root now; an output whose ids were
    made relative to each input must not be resumed with the other kind."""
    from pipeline.config import JobConfig
    from pipeline.errors import UsageError
    from pipeline.io.listing import list_shards
    from pipeline.stages.model import offline_info

    for day in ("day-1", "day-2"):
        (tmp_path / day).mkdir()
        (tmp_path / day / "part-0.txt").write_text("x\n")
    inputs = (str(tmp_path / "day-1"), str(tmp_path / "day-2"))
    config = JobConfig(inputs=inputs, output=str(tmp_path / "out"), model="intfloat/e5-small-v2")
    info = offline_info("intfloat/e5-small-v2")
    meta = config.output_settings().metadata(info, "git:" + "a" * 40)
    shards = list_shards(inputs, {})
    OutputState(Storage(config.output)).prepare(config.output_settings(), meta, shards)  # an output in progress
    manifest_path = tmp_path / "out" / "_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["metadata"].pop("derived_ids")  # as an earlier version wrote it
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="different settings.*derived_ids"):
        OutputState(Storage(config.output)).prepare(config.output_settings(), meta, shards)
    one = JobConfig(inputs=inputs[:1], output=str(tmp_path / "o1"), model="intfloat/e5-small-v2")
    assert "derived_ids" not in one.output_settings().metadata(info, None)  # one input: ids as they always were


@pytest.mark.unit
def test_an_output_older_than_input_format_resumes_and_a_current_one_without_it_is_refused(tmp_path):
    """The compatibility table at work in the identity check: an output made before input_format was
    recorded (no format_version either) resumes whatever the format; an output of the current
    version whose record lacks it was changed by hand, and differs."""
    from pipeline.config import JobConfig
    from pipeline.errors import UsageError
    from pipeline.io.listing import list_shards
    from pipeline.stages.model import offline_info

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part-0.txt").write_text("x\n")
    config = JobConfig(inputs=(str(tmp_path / "in"),), output=str(tmp_path / "out"), model="intfloat/e5-small-v2")
    meta = config.output_settings().metadata(offline_info("intfloat/e5-small-v2"), "git:" + "a" * 40)
    shards = list_shards(config.inputs, {})
    OutputState(Storage(config.output)).prepare(config.output_settings(), meta, shards)  # an output in progress
    manifest_path = tmp_path / "out" / "_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["metadata"].pop("input_format")
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="different settings.*input_format"):  # version 1 records it
        OutputState(Storage(config.output)).prepare(config.output_settings(), meta, shards)
    manifest["metadata"].pop("format_version")  # as the builds before the version wrote it
    manifest_path.write_text(json.dumps(manifest))
    OutputState(Storage(config.output)).prepare(config.output_settings(), meta, shards)  # resumed without it


@pytest.mark.unit
def test_the_fence_runs_before_each_file_a_write_task_publishes(tmp_path):
    """A write task of 4 files whose lease is lost after its first file publishes nothing more."""
    from pipeline.io.sink import write_rows
    from pipeline.ledger.lease import LeaseLost

    checks = []

    def fence():  # each file: once before it is published, once after
        checks.append(1)
        if len(checks) > 2:
            raise LeaseLost("taken over (injected after the first file)")

    table = data_table("s", list(range(8))).append_column("reject_reason", pa.nulls(8, pa.string()))
    with pytest.raises(LeaseLost):
        write_rows(
            Storage(str(tmp_path)),
            table,
            metadata={},
            dim=4,
            output_dtype="float32",
            rows_per_file=2,
            versions={"s": "1:v"},
            fence=fence,
        )
    assert len(list(tmp_path.glob("part-*.parquet"))) == 1


@pytest.mark.unit
def test_a_file_published_across_a_takeover_is_withdrawn_but_an_earlier_one_is_kept(tmp_path):
    """The check passed, then a new holder took over while the upload ran: the file that landed
    is deleted again by its own task. A file that was there before (a retried write of the same
    rows: the same name) is left, since the new holder may have counted it."""
    from pipeline.io.sink import put_file
    from pipeline.ledger.lease import LeaseLost

    storage = Storage(str(tmp_path))
    table = data_table("s", list(range(4)))
    calls = []

    def lost_after_upload():
        calls.append(1)
        if len(calls) % 2 == 0:  # the check after the upload
            raise LeaseLost("taken over while the file was uploaded (injected)")

    with pytest.raises(LeaseLost):
        put_file(storage, "", table, {}, {"rows": 4}, {"s": "1:v"}, fence=lost_after_upload)
    assert list(tmp_path.glob("part-*.parquet")) == []
    kept = put_file(storage, "", table, {}, {"rows": 4}, {"s": "1:v"})  # written while the lease was held
    with pytest.raises(LeaseLost):
        put_file(storage, "", table, {}, {"rows": 4}, {"s": "1:v"}, fence=lost_after_upload)
    assert storage.exists(kept)


@pytest.mark.unit
def test_vectors_computed_in_another_dtype_are_refused_once_the_plan_resolves_auto(tmp_path):
    """--dtype auto recorded as "auto" let a GPU run (bf16) and a CPU run (float32) extend one output.
    The resolved dtype is recorded and checked after the plan, before any write."""
    from pipeline.errors import UsageError
    from pipeline.ledger.manifest import Manifest
    from pipeline.ledger.output import Work

    state = OutputState(Storage(str(tmp_path)))
    work = Work(manifest=Manifest(metadata={}), made_compute={"bfloat16": "o/part-1.parquet"})
    with pytest.raises(
        UsageError, match=r"part-1.parquet holds vectors computed in bfloat16.*float32.*--dtype bfloat16"
    ):
        state.check_compute(work, {"compute_dtype": "float32", "device": "cpu"})
    state.check_compute(work, {"compute_dtype": "bfloat16", "device": "cuda"})
    assert work.manifest.metadata == {}  # a check only: the run records it (OutputRun.fix_compute)
    old = Work(manifest=Manifest(metadata={}), made_compute={None: "o/part-0.parquet"})  # made with "auto", unrecorded
    with pytest.raises(UsageError, match="before the compute dtype was recorded"):
        state.check_compute(old, {"compute_dtype": "float32", "device": "cpu"})

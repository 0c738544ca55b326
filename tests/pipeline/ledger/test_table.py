"""Each proven run published to an Apache Iceberg table as one snapshot (pipeline.ledger.table):
whole runs through the runner with their passes in this process (``InProcessBackend``), the
embedded SQLite catalog kept in the output,
real readers (pyiceberg's scan to Arrow, DuckDB over that Arrow). The shared PostgreSQL catalog
and killed processes are in test_table_e2e.py."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline import runner
from pipeline.errors import JobError, TransientError, UsageError
from tests.local_jobs import InProcessBackend, job_config, write_shard

# the publisher's operator stories through the whole runner, its passes in this process (no Ray:
# what is tested is the ledger and the table; the Ray path publishes in test_table_e2e/_rest)
pytestmark = pytest.mark.unit
run_job = functools.partial(runner.run_job, backend=InProcessBackend)

TABLE = "embeddings.docs"


config = functools.partial(job_config, rows_per_file=4, iceberg_table=TABLE)


def table(out: Path):
    """The table as a reader opens it: the embedded catalog's database, read where it lies."""
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog("e5_embed", uri=f"sqlite:///{out}/_iceberg/catalog.db", warehouse=f"file://{out}/_iceberg")
    return catalog.load_table(TABLE)


def ids(arrow: pa.Table) -> list[str]:
    return sorted(arrow["id"].to_pylist())


def vectors(arrow: pa.Table) -> dict[str, np.ndarray]:
    return dict(zip(arrow["id"].to_pylist(), np.asarray(arrow["embedding"].to_pylist(), dtype=np.float32)))


def corpus_v1(corpus: Path) -> None:
    write_shard(corpus / "s0.jsonl", [(f"a{i}", f"first shard record {i} about lakes") for i in range(6)])
    write_shard(corpus / "s1.jsonl", [(f"b{i}", f"second shard record {i} about hills") for i in range(6)])


def test_runs_publish_one_snapshot_each_and_readers_are_isolated(tmp_path, minilm_path):
    """First run: one append. A rerun: nothing. A new shard: one append of its files. --update:
    one overwrite (stale files out, new in). A reader pinned before the update reads exactly the old
    state during and after it; a new reader the new one; time travel returns the old vectors."""
    import duckdb

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus_v1(corpus)
    first = run_job(config(corpus, out, minilm_path))
    assert first.status == "complete" and f"table {TABLE}" in first.line()
    t = table(out)
    snapshots = t.snapshots()
    assert len(snapshots) == 1 and snapshots[0].summary.operation.value == "append"
    summary = snapshots[0].summary
    assert summary["e5-embed.run-id"] and summary["e5-embed.rows-embedded"] == "12"
    assert summary["e5-embed.model-sha"].startswith("sha256:")
    assert t.properties["e5-embed.embedding-dim"] == "384" and t.properties["e5-embed.output"].endswith("/out")
    assert ids(t.scan().to_arrow()) == sorted([f"a{i}" for i in range(6)] + [f"b{i}" for i in range(6)])
    assert t.schema().find_field("text_hash").field_type.__class__.__name__ == "FixedType"

    assert run_job(config(corpus, out, minilm_path)).status == "noop"
    assert len(table(out).snapshots()) == 1  # nothing new: nothing committed

    write_shard(corpus / "s2.jsonl", [(f"c{i}", f"third shard record {i}") for i in range(3)])
    assert run_job(config(corpus, out, minilm_path)).rows_embedded == 3
    t = table(out)
    assert [s.summary.operation.value for s in t.snapshots()] == ["append", "append"]
    before = t.current_snapshot().snapshot_id
    old = t.scan().to_arrow()

    pinned = table(out).scan(snapshot_id=before)  # a reader that started before the update
    write_shard(corpus / "s1.jsonl", [(f"b{i}", f"second shard record {i} about hills, edited") for i in range(2)])
    seen_during: list[list[str]] = []
    import pipeline.ledger.iceberg as iceberg  # the publisher's step: the update has written, not committed

    real_publish = iceberg.publish

    def read_while_running(*args, **kwargs):  # the update has written and retired files, not committed
        seen_during.append(ids(pinned.to_arrow()))
        seen_during.append(ids(table(out).scan().to_arrow()))  # a new reader, before the commit
        return real_publish(*args, **kwargs)

    iceberg.publish = read_while_running
    try:
        update = run_job(config(corpus, out, minilm_path, update=True))
    finally:
        iceberg.publish = real_publish
    assert update.status == "complete"
    assert seen_during == [ids(old), ids(old)]
    t = table(out)
    assert [s.summary.operation.value for s in t.snapshots()] == ["append", "append", "overwrite"]
    new = t.scan().to_arrow()
    assert ids(new) == sorted([f"a{i}" for i in range(6)] + ["b0", "b1"] + [f"c{i}" for i in range(3)])
    assert ids(pinned.to_arrow()) == ids(old)  # after the commit, the pinned reader still reads the old state
    travelled = vectors(t.scan(snapshot_id=before).to_arrow())
    assert np.allclose(travelled["b0"], vectors(old)["b0"]) and not np.allclose(travelled["b0"], vectors(new)["b0"])

    # DuckDB over the scan's Arrow; the fixed width back with the documented cast
    con = duckdb.connect()
    con.register("docs", new)
    assert con.execute("select count(*), count(distinct id) from docs").fetchone() == (11, 11)
    width = int(t.properties["e5-embed.embedding-dim"])
    fixed = new["embedding"].cast(pa.list_(pa.float32(), width))
    assert fixed.type.list_size == 384
    # the folder says the same: its manifest records the snapshot
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["published"]["snapshot_id"] == t.current_snapshot().snapshot_id
    assert manifest["retired_files"]  # the stale files the old snapshots read are kept for them


def test_a_kill_between_the_proof_and_the_commit_then_a_rerun_commits_once(tmp_path, minilm_path, monkeypatch):
    import pipeline.ledger.table as tablemod

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus_v1(corpus)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed (injected) just before the commit")

    monkeypatch.setattr(tablemod, "_commit", killed)
    with pytest.raises(KeyboardInterrupt):
        run_job(config(corpus, out, minilm_path))
    monkeypatch.undo()
    assert (out / "_SUCCESS").exists()  # the output is complete; only the table lags
    killed = json.loads((out / "_manifest.json").read_text())["runs"][-1]
    assert run_job(config(corpus, out, minilm_path)).status == "noop"  # the rerun only commits
    t = table(out)
    assert len(t.snapshots()) == 1 and len(ids(t.scan().to_arrow())) == 12
    # the snapshot says whose rows it holds: the killed run's (its id is in the manifest's runs), not the rerun's
    summary = t.current_snapshot().summary
    assert summary["e5-embed.run-id"] == killed["run_id"] == summary["e5-embed.run-ids"]
    assert summary["e5-embed.rows-embedded"] == "12" and summary["e5-embed.rows-total"] == "12"
    assert summary["e5-embed.committed-by"] not in (killed["run_id"], "")
    assert run_job(config(corpus, out, minilm_path)).status == "noop"
    assert len(table(out).snapshots()) == 1  # never a second append of the same files


def test_a_kill_during_the_commit_leaves_the_table_as_it_was_then_the_rerun_commits(tmp_path, minilm_path, monkeypatch):
    """The embedded catalog: the new metadata file is written, the catalog database is not put back."""
    import pipeline.ledger.table as tablemod

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus_v1(corpus)
    real = tablemod._commit

    def commit_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt("killed (injected) after the metadata, before the catalog is saved")

    monkeypatch.setattr(tablemod, "_commit", commit_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_job(config(corpus, out, minilm_path))
    monkeypatch.undo()
    assert not (out / "_iceberg" / "catalog.db").exists()  # nothing was committed where readers look
    run_job(config(corpus, out, minilm_path))
    t = table(out)
    assert len(t.snapshots()) == 1 and len(ids(t.scan().to_arrow())) == 12


def test_a_commit_that_loses_the_race_is_computed_again_never_doubled(tmp_path, minilm_path, monkeypatch):
    """Another writer commits between our look at the table and our commit (the catalog's optimistic
    concurrency refuses ours): the change is computed again on the new state and committed once."""
    import pipeline.ledger.table as tablemod

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus_v1(corpus)
    assert run_job(config(corpus, out, minilm_path)).status == "complete"
    write_shard(corpus / "s2.jsonl", [(f"c{i}", f"third shard record {i}") for i in range(3)])
    real, raced = tablemod._commit, []

    def rival_first(tbl, add, remove, summary):
        if not raced:  # a rival's commit lands first (a property change: a real snapshot-less commit)
            raced.append(1)
            with tbl.transaction() as tx:
                tx.set_properties(owner="rival")
            from pyiceberg.exceptions import CommitFailedException

            raise CommitFailedException("Requirement failed: branch main has changed (injected race)")
        return real(tbl, add, remove, summary)

    monkeypatch.setattr(tablemod, "_commit", rival_first)
    assert run_job(config(corpus, out, minilm_path)).status == "complete"
    t = table(out)
    assert raced and t.properties["owner"] == "rival"
    assert [s.summary.operation.value for s in t.snapshots()] == ["append", "append"]
    assert len(ids(t.scan().to_arrow())) == 15


def test_someone_elses_files_in_the_table_are_refused_by_name(tmp_path, minilm_path):
    import pyarrow.parquet as pq

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus_v1(corpus)
    assert run_job(config(corpus, out, minilm_path)).status == "complete"
    t = table(out)
    stray = tmp_path / "elsewhere" / "extra.parquet"
    stray.parent.mkdir()
    pq.write_table(t.scan(limit=1).to_arrow().cast(t.schema().as_arrow()), stray)
    t.add_files([f"file://{stray}"])  # another writer appends a file that is not the output's
    write_shard(corpus / "s2.jsonl", [("c0", "a new record")])
    with pytest.raises(UsageError, match=r"outside the output.*extra\.parquet.*another --iceberg-table") as caught:
        run_job(config(corpus, out, minilm_path))
    assert caught.value.exit_code == 2 and (out / "_SUCCESS").exists()


def test_a_dropped_table_is_made_again_and_a_changed_schema_refused(tmp_path, minilm_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus_v1(corpus)
    assert run_job(config(corpus, out, minilm_path)).status == "complete"
    from pyiceberg.catalog.sql import SqlCatalog

    def catalog():
        return SqlCatalog("e5_embed", uri=f"sqlite:///{out}/_iceberg/catalog.db", warehouse=f"file://{out}/_iceberg")

    catalog().drop_table(TABLE)
    assert run_job(config(corpus, out, minilm_path)).status == "noop"
    assert len(ids(table(out).scan().to_arrow())) == 12  # made again, every file registered once
    with table(out).update_schema() as schema:
        schema.delete_column("truncated")
    with pytest.raises(UsageError, match=r"schema of table embeddings\.docs.*truncated.*changed by hand"):
        run_job(config(corpus, out, minilm_path))


def test_another_model_or_output_into_the_same_table_is_refused(tmp_path, minilm_path, tiny_e5_path, monkeypatch):
    """A shared catalog (configured the pyiceberg way, by environment) is where two outputs could
    meet in one table: a second output, or another model, is refused by name."""
    corpus = tmp_path / "corpus"
    corpus_v1(corpus)
    monkeypatch.setenv("PYICEBERG_CATALOG__SHARED__URI", f"sqlite:///{tmp_path}/shared.db")
    monkeypatch.setenv("PYICEBERG_CATALOG__SHARED__WAREHOUSE", f"file://{tmp_path}/warehouse")
    first = run_job(config(corpus, tmp_path / "out", minilm_path, iceberg_catalog="shared"))
    assert first.status == "complete" and "(shared): snapshot" in first.line()
    for other, model in ((tmp_path / "second", minilm_path), (tmp_path / "third", tiny_e5_path)):
        with pytest.raises(
            UsageError, match=r"table embeddings\.docs publishes output .*/out .*another --iceberg-table"
        ):
            run_job(config(corpus, other, model, iceberg_catalog="shared"))


def test_an_unreachable_catalog_leaves_the_output_complete_and_a_rerun_only_commits(tmp_path, minilm_path, monkeypatch):
    """A shared catalog whose server is down at commit time: exit 1 naming it, the output stays
    complete; once it is back, a rerun commits and embeds nothing."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus_v1(corpus)
    monkeypatch.setenv(
        "PYICEBERG_CATALOG__LAKE__URI", "postgresql+psycopg2://nobody@127.0.0.1:1/none"
    )  # nothing listens
    monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__WAREHOUSE", f"file://{tmp_path}/warehouse")
    with pytest.raises(
        TransientError, match=r"complete, but publishing it to table embeddings\.docs in catalog lake"
    ) as caught:
        run_job(config(corpus, out, minilm_path, iceberg_catalog="lake"))
    assert caught.value.exit_code == 1 and (out / "_SUCCESS").exists()
    monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__URI", f"sqlite:///{tmp_path}/lake.db")  # the catalog is back
    rerun = run_job(config(corpus, out, minilm_path, iceberg_catalog="lake"))
    assert rerun.status == "noop" and "table embeddings.docs (lake): snapshot" in rerun.line()


def test_publishing_refuses_float16_and_a_second_table(tmp_path, minilm_path, monkeypatch):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus_v1(corpus)
    with pytest.raises(UsageError, match="no 16-bit float type"):
        config(corpus, out, minilm_path, output_dtype="float16")
    assert run_job(config(corpus, out, minilm_path)).status == "complete"
    with pytest.raises(
        UsageError, match=r"published to table embeddings\.docs.*rerun with --iceberg-table embeddings\.docs,"
    ):
        run_job(config(corpus, out, minilm_path).replace(iceberg_table="embeddings.other"))
    # the same table name through another catalog: the advice names the catalog, never the flag already passed
    monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__URI", f"sqlite:///{tmp_path}/lake.db")
    monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__WAREHOUSE", f"file://{tmp_path}/warehouse")
    with pytest.raises(UsageError) as caught:
        run_job(config(corpus, out, minilm_path, iceberg_catalog="lake"))
    message = str(caught.value)
    assert "rerun with no --iceberg-catalog (its embedded catalog)" in message
    assert "--iceberg-table" not in message.split("rerun with")[1]
    assert JobError  # the family: a refusal is a UsageError (exit 2), a failed commit a JobError (exit 1)


def test_overwrite_replaces_everything_in_one_snapshot_and_expiry_frees_retired_files(tmp_path, minilm_path):
    """--overwrite: one overwrite snapshot, new files under names of their own (an old snapshot's
    files are never overwritten) and the old snapshot still readable. With 2 snapshots kept, the
    files only expired snapshots read are deleted, and the folder holds no retired file beyond them."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus_v1(corpus)
    assert run_job(config(corpus, out, minilm_path, iceberg_keep_snapshots=2)).status == "complete"
    t = table(out)
    first = t.current_snapshot().snapshot_id
    old_files = {task.file.file_path for task in t.scan().plan_files()}
    old = t.scan().to_arrow()
    assert run_job(config(corpus, out, minilm_path, iceberg_keep_snapshots=2, overwrite=True)).status == "complete"
    t = table(out)
    assert [s.summary.operation.value for s in t.snapshots()] == ["append", "overwrite"]
    new_files = {task.file.file_path for task in t.scan().plan_files()}
    assert not old_files & new_files  # new names: no file an old snapshot reads was overwritten
    assert ids(t.scan(snapshot_id=first).to_arrow()) == ids(old)
    assert all(Path(p.removeprefix("file://")).exists() for p in old_files)  # retired, kept

    write_shard(corpus / "s1.jsonl", [(f"b{i}", f"edited record {i}") for i in range(2)])
    assert run_job(config(corpus, out, minilm_path, iceberg_keep_snapshots=2, update=True)).status == "complete"
    t = table(out)
    assert len(t.snapshots()) == 2 and first not in {s.snapshot_id for s in t.snapshots()}  # expired
    assert not any(Path(p.removeprefix("file://")).exists() for p in old_files)  # read by no kept snapshot: gone
    manifest = json.loads((out / "_manifest.json").read_text())
    readable = {task.file.file_path for s in t.snapshots() for task in t.scan(snapshot_id=s.snapshot_id).plan_files()}
    assert {f"file://{p}" for p in manifest["retired_files"]} <= readable  # what is kept is still read
    assert ids(t.scan().to_arrow()) == sorted([f"a{i}" for i in range(6)] + ["b0", "b1"])


def test_overwrite_of_a_published_output_with_a_damaged_manifest_never_writes_over_its_files(tmp_path, minilm_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus_v1(corpus)
    assert run_job(config(corpus, out, minilm_path)).status == "complete"
    t = table(out)
    first = t.current_snapshot().snapshot_id
    old = {
        task.file.file_path.removeprefix("file://"): Path(task.file.file_path.removeprefix("file://")).read_bytes()
        for task in t.scan().plan_files()
    }
    before = vectors(t.scan().to_arrow())
    (out / "_manifest.json").write_text("{ damaged")
    assert run_job(config(corpus, out, minilm_path, overwrite=True)).status == "complete"
    t = table(out)
    new = {task.file.file_path.removeprefix("file://") for task in t.scan().plan_files()}
    assert not new & set(old)  # names of their own
    assert all(Path(p).read_bytes() == data for p, data in old.items())  # the old snapshot's files untouched
    travelled = vectors(t.scan(snapshot_id=first).to_arrow())
    assert travelled.keys() == before.keys() and all(np.array_equal(travelled[k], before[k]) for k in before)


def test_a_damaged_catalog_is_refused_and_rebuilt_by_the_flag_the_message_names(tmp_path, minilm_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus_v1(corpus)
    assert run_job(config(corpus, out, minilm_path)).status == "complete"
    (out / "_iceberg" / "catalog.db").write_bytes(b"not a database at all" * 50)
    with pytest.raises(UsageError) as caught:
        run_job(config(corpus, out, minilm_path))
    assert caught.value.exit_code == 2 and "catalog.db is damaged" in str(caught.value)
    assert "Rerun the same command with --iceberg-rebuild" in str(caught.value)
    assert (out / "_SUCCESS").exists()
    rebuilt = run_job(config(corpus, out, minilm_path, iceberg_rebuild=True))
    assert rebuilt.status == "noop" and "snapshot" in rebuilt.line()
    assert len(ids(table(out).scan().to_arrow())) == 12

"""The publish step alone (pipeline.ledger.table.publish) against the embedded catalog on local
disk: a kill or a failed write at every point of a publish leaves the *saved* table readable, every
row of it; the retired files it no longer needs are deleted only after the catalog is saved, and a
later publish finishes a deletion that was cut short; a reader's tag is kept, not fatal; an
unreadable catalog or metadata is refused with the flag that rebuilds it.

No Ray and no server: data files in the job's own format (``e5tools.rehearsal.iceberg_bench``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from e5tools.rehearsal.iceberg_bench import DIM, METADATA, data_file
from pipeline.errors import E5EmbedError, UsageError
from pipeline.io import schemas
from pipeline.io.storage import Storage
from pipeline.ledger import table as tablemod
from pipeline.ledger.lease import LeaseLost
from pipeline.ledger.table import publish
from pipeline.output_settings import TableSettings

pytestmark = pytest.mark.unit

TABLE = "embeddings.docs"
EXPECTED = schemas.output_schema(DIM)


class Killed(BaseException):
    """A kill: nothing after it runs (not an Exception, so no handler tidies up)."""


def settings(keep: int, rebuild: bool = False) -> TableSettings:
    return TableSettings(table=TABLE, catalog=None, keep_snapshots=keep, rebuild=rebuild)


def saved_table(root: Path):
    """The table as a reader opens it: the saved catalog database, where it lies."""
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog("e5_embed", uri=f"sqlite:///{root}/_iceberg/catalog.db", warehouse=f"file://{root}/_iceberg")
    return catalog.load_table(TABLE)


def read_ids(root: Path) -> set[str]:
    """Every row of the saved table's current snapshot (reading each data file)."""
    return set(saved_table(root).scan().to_arrow()["id"].to_pylist())


def ids_of(paths) -> set[str]:
    import pyarrow.parquet as pq

    return {i for p in paths for i in pq.read_table(p, columns=["id"])["id"].to_pylist()}


class Output:
    """An output folder whose files are replaced one publish at a time, as ``--update`` does:
    ``base`` stays, one file per generation is retired by the next."""

    def __init__(self, root: Path):
        self.root = root
        self.storage = Storage(str(root))
        self.rng = np.random.default_rng(0)
        self.base = [data_file(self.storage, "base.jsonl", self.rng)]
        self.generation = 0
        self.current = data_file(self.storage, "changing.jsonl", self.rng, version=f"{self.generation}:v")
        self.retired: list[str] = []

    def files(self) -> list[str]:
        return self.base + [self.current]

    def replace(self) -> None:
        """An --update: the changing shard's file retired, its new version written."""
        self.retired.append(self.current)
        self.generation += 1
        self.current = data_file(self.storage, "changing.jsonl", self.rng, version=f"{self.generation}:v")

    def publish(self, keep: int, **kw):
        done = publish(
            settings(keep, kw.pop("rebuild", False)),
            self.storage,
            METADATA,
            EXPECTED,
            self.files(),
            {"run-id": f"gen{self.generation}"},
            retired=list(self.retired),
            **kw,
        )
        self.retired = [p for p in self.retired if p not in done.deleted_files]  # what the manifest keeps
        return done


def _history(out: Output, keep: int) -> None:
    """A published output with ``keep`` snapshots, the next publish expiring the oldest: with
    keep=1 one snapshot; with the default 10, ten (more than ten publishes in all by the next one)."""
    out.publish(keep)
    for _ in range(keep - 1):
        out.replace()
        out.publish(keep)
    assert len(saved_table(out.root).snapshots()) == keep


POINTS = ["commit", "expire", "released", "put_back_fails", "lease_lost", "first_delete", "after_deletes"]


@pytest.mark.parametrize("keep", [1, 10])
@pytest.mark.parametrize("point", POINTS)
def test_a_kill_or_failed_write_anywhere_in_a_publish_leaves_the_saved_table_readable(
    tmp_path, monkeypatch, keep, point
):
    out = Output(tmp_path / "out")
    _history(out, keep)
    before = read_ids(out.root)
    oldest = saved_table(out.root).snapshots()[0]
    out.replace()  # the next publish: one commit, the oldest snapshot expires, a retired file is released
    expected_after = ids_of(out.files())

    def after(name, exc):
        real = getattr(tablemod, name)

        def wrapped(*args, **kwargs):
            real(*args, **kwargs)
            raise exc

        monkeypatch.setattr(tablemod, name, wrapped)

    if point == "commit":
        after("_commit", Killed("after the commit, before anything else"))
    elif point == "expire":
        after("_expire", Killed("after the expiry's commit, before the catalog is saved"))
    elif point == "released":
        after("_released", Killed("the released files known, the catalog not saved"))
    elif point == "put_back_fails":
        real_write = Storage.write_bytes_atomic

        def failing(self, path, data):
            if path.endswith("catalog.db"):
                raise OSError("injected: the catalog's put-back failed")
            return real_write(self, path, data)

        monkeypatch.setattr(Storage, "write_bytes_atomic", failing)
    elif point == "first_delete":
        real_delete = Storage.delete

        def one_then_die(self, path):
            real_delete(self, path)
            raise Killed("killed during the deletions, one file deleted")

        monkeypatch.setattr(Storage, "delete", one_then_die)
    elif point == "after_deletes":
        after("delete_released", Killed("the files deleted, the manifest not saved"))

    state = {"publishing": False}  # lease_lost: the lease goes once the released files are known

    def fence():
        if point == "lease_lost" and state["publishing"]:
            raise LeaseLost("lost (injected) just before the catalog's put-back")

    if point == "lease_lost":
        real_released = tablemod._released

        def released_then_lose(*args, **kwargs):
            state["publishing"] = True
            return real_released(*args, **kwargs)

        monkeypatch.setattr(tablemod, "_released", released_then_lose)
    with pytest.raises((Killed, E5EmbedError)):
        out.publish(keep, fence=fence)
    monkeypatch.undo()

    # a reader of the table as saved reads every row: the old state or the new, never a missing file
    now = read_ids(out.root)
    assert now in (before, expected_after), point
    assert now == (expected_after if point in ("first_delete", "after_deletes") else before)
    saved = saved_table(out.root)
    for s in saved.snapshots():  # and every snapshot it keeps, by time travel
        assert saved.scan(snapshot_id=s.snapshot_id).to_arrow().num_rows > 0
    # the rerun finishes what was cut short (the commit, the expiry, the deletions) exactly once
    done = out.publish(keep)
    assert read_ids(out.root) == expected_after
    table = saved_table(out.root)
    assert oldest.snapshot_id not in {s.snapshot_id for s in table.snapshots()}
    assert len(table.snapshots()) == keep and table.current_snapshot().summary.operation.value == "overwrite"
    readable = {t.file.file_path for s in table.snapshots() for t in table.scan(snapshot_id=s.snapshot_id).plan_files()}
    for path in out.retired:  # kept exactly while a snapshot reads them
        assert f"file://{path}" in readable and os.path.exists(path)
    assert done.committed == (point not in ("first_delete", "after_deletes"))
    for s in table.snapshots():  # every kept snapshot reads whole
        assert table.scan(snapshot_id=s.snapshot_id).to_arrow().num_rows > 0


def test_a_readers_tag_keeps_its_snapshot_and_files_and_publishing_goes_on(tmp_path):
    out = Output(tmp_path / "out")
    out.publish(1)
    tagged = saved_table(out.root).current_snapshot().snapshot_id
    tagged_ids = read_ids(out.root)
    with saved_table(out.root).manage_snapshots() as snapshots:
        snapshots.create_tag(tagged, "reader-pin")  # a reader pins what it read
    for _ in range(3):
        out.replace()
        done = out.publish(1)
        assert done.committed
    table = saved_table(out.root)
    assert read_ids(out.root) == ids_of(out.files())  # the table advanced
    assert {s.snapshot_id for s in table.snapshots()} == {tagged, table.current_snapshot().snapshot_id}
    assert set(table.scan(snapshot_id=tagged).to_arrow()["id"].to_pylist()) == tagged_ids  # its files kept
    # the tag goes: the next publish expires its snapshot and deletes the files only it read
    with table.manage_snapshots() as snapshots:
        snapshots.remove_tag("reader-pin")
    held = list(out.retired)
    out.publish(1)
    assert len(saved_table(out.root).snapshots()) == 1
    assert not any(os.path.exists(p) for p in held) and out.retired == []


def test_a_branch_head_is_kept_like_a_tag(tmp_path):
    out = Output(tmp_path / "out")
    out.publish(1)
    head = saved_table(out.root).current_snapshot().snapshot_id
    with saved_table(out.root).manage_snapshots() as snapshots:
        snapshots.create_branch(head, "audit")
    out.replace()
    out.publish(1)
    assert head in {s.snapshot_id for s in saved_table(out.root).snapshots()}


def test_a_damaged_catalog_is_refused_with_the_flag_that_rebuilds_it(tmp_path):
    out = Output(tmp_path / "out")
    out.publish(10)
    db = out.root / "_iceberg" / "catalog.db"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(UsageError) as caught:
        out.publish(10)
    message = str(caught.value)
    assert "damaged" in message and str(db) in message and "--iceberg-rebuild" in message
    assert caught.value.exit_code == 2
    out.replace()
    done = out.publish(10, rebuild=True)
    assert done.committed and read_ids(out.root) == ids_of(out.files())
    assert out.retired == [] and len(saved_table(out.root).snapshots()) == 1  # history starts over
    again = out.publish(10, rebuild=True)  # a readable table: --iceberg-rebuild leaves it as it is
    assert not again.committed and len(saved_table(out.root).snapshots()) == 1


def test_a_deleted_metadata_folder_is_refused_with_the_flag_that_rebuilds_it(tmp_path):
    out = Output(tmp_path / "out")
    out.publish(10)
    metadata = Path(saved_table(out.root).metadata_location.removeprefix("file://")).parent
    shutil.rmtree(metadata)
    with pytest.raises(UsageError) as caught:
        out.publish(10)
    message = str(caught.value)
    assert f"table {TABLE} in catalog e5_embed cannot be read" in message and "--iceberg-rebuild" in message
    assert "FileNotFoundError" in message
    out.publish(10, rebuild=True)
    assert read_ids(out.root) == ids_of(out.files())
    assert json.loads(json.dumps(saved_table(out.root).properties))["e5-embed.output"].endswith("/out")

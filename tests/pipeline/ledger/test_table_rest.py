"""Publishing through a REST catalog (``type: rest``, configured the pyiceberg way), with the CLI as
users run it: pyiceberg's real REST client against the REST protocol on loopback
(``tests/iceberg_rest.py``: no REST catalog server installs here, so its routes sit over pyiceberg's SQL
catalog, whose optimistic concurrency answers a stale commit with 409). Races are real: a rival's commit
lands on the server between the job's look at the table and its commit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.iceberg_rest import IcebergRestServer
from tests.local_jobs import write_shard
from tests.pipeline.ledger.test_table import TABLE, corpus_v1, ids

ROOT = Path(__file__).resolve().parents[3]


def run(corpus: Path, out: Path, model: str, env: dict, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "pipeline", "run", "--input", str(corpus), "--output", str(out), "--model", model]
    argv += ["--no-progress", "--rows-per-file", "4", "--iceberg-table", TABLE, "--iceberg-catalog", "lake", *extra]
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.e2e
def test_a_rest_catalog_publishes_and_a_lost_race_is_computed_again_or_refused_by_name(tmp_path, minilm_path):
    from pyiceberg.catalog import load_catalog

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus_v1(corpus)
    with IcebergRestServer(str(tmp_path / "backend.db"), f"file://{tmp_path}/warehouse") as server:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}
        env |= {"PYICEBERG_CATALOG__LAKE__TYPE": "rest", "PYICEBERG_CATALOG__LAKE__URI": server.uri}
        catalog = load_catalog("lake", type="rest", uri=server.uri)  # another engine, the same catalog

        first = run(corpus, out, minilm_path, env)
        assert first.returncode == 0, first.stderr[-3000:]
        table = catalog.load_table(TABLE)
        assert len(ids(table.scan().to_arrow())) == 12 and len(table.snapshots()) == 1
        assert table.properties["commit.retry.num-retries"] == "0"  # a lost race comes back to the job
        before = table.current_snapshot().snapshot_id

        # a rival commits (a snapshot of its own, no files) between the job's look and its commit: the
        # server refuses the job's commit (409), the job computes the change again and commits it once
        def rival_without_files(backend, identifier):
            with backend.load_table(identifier).transaction() as tx:
                with tx.update_snapshot(snapshot_properties={"writer": "rival"}).fast_append():
                    pass

        server.before_commit = rival_without_files
        write_shard(corpus / "s2.jsonl", [(f"c{i}", f"third shard record {i}") for i in range(3)])
        raced = run(corpus, out, minilm_path, env)
        assert raced.returncode == 0, raced.stderr[-3000:]
        assert server.conflicts == 1 and "another commit came first" in raced.stderr
        table = catalog.load_table(TABLE)
        assert [s.summary.get("writer") for s in table.snapshots()] == [None, "rival", None]
        files = [task.file.file_path for task in table.scan().plan_files()]
        assert len(files) == len(set(files)) == len(list(out.glob("part-*.parquet")))  # each file once
        assert len(ids(table.scan().to_arrow())) == 15
        # a reader pinned to the snapshot before still reads exactly that state
        assert len(ids(table.scan(snapshot_id=before).to_arrow())) == 12

        # a rival that adds its own data file at that moment: the job's commit is refused by the server,
        # the job looks again, finds a file outside its output and refuses by name; nothing of it lands
        foreign = tmp_path / "elsewhere" / "part-rival.parquet"
        foreign.parent.mkdir()
        shutil.copy(sorted(out.glob("part-*.parquet"))[0], foreign)

        def rival_with_a_file(backend, identifier):
            backend.load_table(identifier).add_files([f"file://{foreign}"])

        server.before_commit = rival_with_a_file
        write_shard(corpus / "s1.jsonl", [(f"b{i}", f"second shard record {i}, edited") for i in range(3)])
        refused = run(corpus, out, minilm_path, env, "--update")
        assert refused.returncode == 2, refused.stderr[-3000:]
        last = refused.stderr.strip().splitlines()[-1]
        assert "outside the output" in last and "part-rival.parquet" in last and f"table {TABLE}" in last
        table = catalog.load_table(TABLE)
        assert [s.summary.operation.value for s in table.snapshots()] == ["append", "append", "append", "append"]
        assert server.conflicts == 2


@pytest.mark.unit
def test_a_committed_snapshot_that_is_not_the_output_is_said_with_what_differs():
    """The check after every commit (a writer whose library redid a lost commit on its own could
    have carried another writer's files into the snapshot)."""
    from types import SimpleNamespace

    from pipeline.errors import UsageError
    from pipeline.ledger.table import _check_committed

    def table_of(*paths):
        tasks = [SimpleNamespace(file=SimpleNamespace(file_path=p)) for p in paths]
        return SimpleNamespace(
            current_snapshot=lambda: SimpleNamespace(snapshot_id=7),
            scan=lambda: SimpleNamespace(plan_files=lambda: tasks),
        )

    _check_committed(table_of("s3://b/out/part-1.parquet"), {"s3://b/out/part-1.parquet"}, "table t")
    with pytest.raises(UsageError, match=r"snapshot just committed \(7\).*1 file\(s\) another writer added "
                       r"\(e.g. s3://b/elsewhere/x.parquet\), 0 of the output's missing"):  # fmt: skip
        _check_committed(
            table_of("s3://b/out/part-1.parquet", "s3://b/elsewhere/x.parquet"), {"s3://b/out/part-1.parquet"}, "t"
        )

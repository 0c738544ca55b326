"""Publishing through a shared SQL catalog on a real PostgreSQL server, with the CLI as users run
it (the catalog configured the pyiceberg way: PYICEBERG_CATALOG__LAKE__* variables): runs that
publish, an --update as one overwrite, the server down at commit time and back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.local_jobs import write_shard
from tests.pipeline.ledger.test_table import TABLE, corpus_v1, ids

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[3]


def run(corpus: Path, out: Path, model: str, env: dict, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "pipeline", "run", "--input", str(corpus), "--output", str(out), "--model", model]
    argv += ["--no-progress", "--rows-per-file", "4", "--iceberg-table", TABLE, "--iceberg-catalog", "lake", *extra]
    return subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_a_postgres_catalog_publishes_updates_and_survives_its_server_going_away(
    postgres_server, tmp_path, minilm_path
):
    from pyiceberg.catalog import load_catalog

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus_v1(corpus)
    lake = {"uri": postgres_server.uri(), "warehouse": f"file://{tmp_path}/warehouse"}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}
    env.update({f"PYICEBERG_CATALOG__LAKE__{k.upper()}": v for k, v in lake.items()})

    first = run(corpus, out, minilm_path, env)
    assert first.returncode == 0, first.stderr[-3000:]
    catalog = load_catalog("lake", **lake)  # another engine's view: the same catalog, by its settings
    table = catalog.load_table(TABLE)
    assert len(ids(table.scan().to_arrow())) == 12 and len(table.snapshots()) == 1

    write_shard(corpus / "s1.jsonl", [(f"b{i}", f"second shard record {i}, edited") for i in range(3)])
    update = run(corpus, out, minilm_path, env, "--update")
    assert update.returncode == 0, update.stderr[-3000:]
    table = catalog.load_table(TABLE)
    assert [s.summary.operation.value for s in table.snapshots()] == ["append", "overwrite"]
    assert len(ids(table.scan().to_arrow())) == 9

    postgres_server.stop()  # the catalog's server goes away; a new shard arrives
    try:
        write_shard(corpus / "s2.jsonl", [("c0", "a record for a day the catalog was down")])
        down = run(corpus, out, minilm_path, env)
        assert down.returncode == 1, down.stderr[-3000:]
        last = down.stderr.strip().splitlines()[-1]
        assert last.startswith("e5-embed: temporary failure:") and "catalog lake" in last and "is complete" in last
        assert (out / "_SUCCESS").exists()
    finally:
        postgres_server.restart()
    rerun = run(corpus, out, minilm_path, env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "already complete" in rerun.stderr + rerun.stdout  # nothing embedded again: only the commit
    table = load_catalog("lake", **lake).load_table(TABLE)
    assert len(ids(table.scan().to_arrow())) == 10 and len(table.snapshots()) == 3
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["published"]["catalog"] == "lake" and manifest["published"]["snapshot_id"] == (
        table.current_snapshot().snapshot_id
    )

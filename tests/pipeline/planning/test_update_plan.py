"""`plan --update`: a dry run of --update's change detection that says how many records the update
will encode and carry over, checked against the update itself."""

from __future__ import annotations

import json

import pytest

from pipeline import cli
from pipeline.config import JobConfig
from pipeline.runner import run_job
from tests.pipeline.test_update import change_to_v2, corpus_v1, write_docs

pytestmark = pytest.mark.scenario


def test_plan_update_predicts_what_the_update_encodes(ray_cluster, tmp_path, minilm_path, capsys):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_docs(corpus, corpus_v1())
    config = JobConfig(inputs=(str(corpus),), output=str(out), model=minilm_path, progress=False, max_bad_fraction=0.5)
    assert run_job(config).status == "complete"
    change_to_v2(corpus)  # s1: 2 edited, 1 deleted, 2 added; s2 gone; s3 new (5)
    capsys.readouterr()
    argv = ["plan", "--input", str(corpus), "--model", minilm_path, "--output", str(out), "--update"]
    assert cli.main([*argv, "--gpus", "0", "--cpus", "2", "--json"]) == 0
    update = json.loads(capsys.readouterr().out)["estimate"]["update"]
    assert (update["new_shards"], update["changed_shards"], update["vanished_shards"]) == (1, 1, 1)
    summary = run_job(config.replace(update=True))
    assert update["records_to_encode"] == summary.rows_embedded == 9  # 2 edited + 2 added in s1, 5 in s3
    assert update["records_carried"] == summary.rows_reused == 17  # s1's unchanged records
    assert update["records_rejected"] == 1  # s1's blank record: read, rejected again


def test_plan_update_counts_an_empty_shard_that_grew_and_the_rows_a_stopped_run_left(
    ray_cluster, tmp_path, minilm_path, capsys
):
    """Two things the run reads that a plan looking only at new and stale shards missed: a shard
    that was empty and gained records (no rows in any file, so no stale file names it), and the
    rows of an unfinished output (a run stopped by its budget: no _SUCCESS, some files written)."""
    import pyarrow.parquet as pq

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus.mkdir()

    def shard(name: str, n: int, word: str) -> None:
        (corpus / name).write_text(
            "".join(json.dumps({"id": f"{word}{i}", "text": f"{word} record {i}"}) + "\n" for i in range(n))
        )

    shard("s0.jsonl", 20, "lake")
    shard("s5.jsonl", 0, "hill")
    config = JobConfig(inputs=(str(corpus),), output=str(out), model=minilm_path, progress=False, rows_per_file=8)
    assert run_job(config).status == "complete"
    shard("s5.jsonl", 15, "hill")  # the empty shard gains 15 records
    argv = ["plan", "--input", str(corpus), "--model", minilm_path, "--output", str(out), "--update"]
    argv += ["--gpus", "0", "--cpus", "2", "--json"]

    def planned() -> dict:
        capsys.readouterr()
        assert cli.main(argv) == 0
        return json.loads(capsys.readouterr().out)["estimate"]["update"]

    update = planned()
    assert (update["shards_to_read"], update["changed_shards"]) == (1, 1)
    summary = run_job(config.replace(update=True))
    assert update["records_to_encode"] == summary.rows_embedded == 15

    # an unfinished output: a data file and _SUCCESS gone, as a budget stop leaves it (whole files only)
    victim = sorted(out.glob("part-*.parquet"))[0]
    left = pq.read_metadata(victim).num_rows
    victim.unlink()
    (out / "_SUCCESS").unlink()
    update = planned()
    assert update["unfinished_shards"] >= 1 and update["shards_to_read"] >= 1
    summary = run_job(config.replace(update=True))
    assert update["records_to_encode"] == summary.rows_embedded == left

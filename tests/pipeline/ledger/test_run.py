"""A whole run's bookkeeping without Ray (pipeline.ledger.run.OutputRun): the job's own reader,
tokenizer, encoder and sink, in-process, stand in for the Ray pipeline; every ledger decision is
the one the runner takes. Begin, fix the vectors' identity, write, tidy, prove, mark, publish; a
failure recorded with the totals the output holds; an --update's carried and removed rows; a file
that appears between the proof and the mark; the publisher's one-table rule before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet  # noqa: F401  (pa.parquet)
import pytest

from pipeline.errors import JobError, UsageError
from pipeline.io.counters import Counters
from pipeline.ledger.manifest import is_complete
from tests.local_jobs import Job, output_ids, write_corpus, write_shard

pytestmark = pytest.mark.unit


def manifest(job: Job) -> dict:
    return json.loads((job.out / "_manifest.json").read_text())


def test_a_whole_run_and_a_rerun_kept_by_the_ledger_alone(tmp_path, minilm_path):
    job = Job(tmp_path, minilm_path, iceberg_table="embeddings.docs")
    write_shard(job.corpus / "s0.jsonl", [(f"a{i}", f"lakes and rivers {i}") for i in range(6)])
    write_shard(job.corpus / "s1.jsonl", [(f"b{i}", f"hills and valleys {i}") for i in range(5)])
    output, line = job.run()
    assert is_complete(output.state.storage) and "table embeddings.docs (e5_embed): snapshot" in line
    m = manifest(job)
    assert (m["rows_written"], m["complete"], m["runs"][-1]["status"]) == (11, True, "complete")
    assert m["metadata"]["compute_dtype"] == "float32" and m["published"]["through_run"] == m["runs"][-1]["run_id"]
    with pytest.raises(TypeError):  # the vectors' identity is fixed once, never edited in place
        output.metadata["compute_dtype"] = "bfloat16"
    again, work = job.begin()
    assert work.noop and again.publish_current().endswith("already at snapshot " + str(m["published"]["snapshot_id"])
                                                          + ", 3 file(s)")  # fmt: skip


def test_a_failed_pipeline_is_recorded_with_what_the_output_holds_then_a_rerun_finishes(tmp_path, minilm_path):
    job = Job(tmp_path, minilm_path)
    write_shard(job.corpus / "s0.jsonl", [(f"a{i}", f"record {i}") for i in range(12)])
    output, work = job.begin()
    run = job.record(output)
    with pytest.raises(RuntimeError):
        job.embed(output, work, fail_after=2)  # two blocks of 4 written, then the failure
    output.failed(run, Counters(rows_written=8), "pipeline failed: injected")
    m = manifest(job)
    assert (m["runs"][-1]["status"], m["rows_written"], m["complete"]) == ("failed", 8, False)
    assert not is_complete(output.state.storage)
    _, work = job.begin()
    assert work.rows_skipped == 8  # the footers say what is done
    rerun, _ = job.run()
    assert manifest(job)["rows_written"] == 12 and is_complete(rerun.state.storage)


def test_an_update_counts_carried_and_removed_rows_and_retires_on_a_published_output(tmp_path, minilm_path):
    job = Job(tmp_path, minilm_path, iceberg_table="embeddings.docs")
    write_shard(job.corpus / "s0.jsonl", [(f"a{i}", f"text {i}") for i in range(8)])
    job.run()
    write_shard(job.corpus / "s0.jsonl", [(f"a{i}", f"text {i}") for i in range(5)])  # 3 records deleted
    job.config = job.config.replace(update=True)
    output, work = job.begin()
    assert output.touched == {work.stale[0][1][0]} and len(work.shards) == 1
    run = job.record(output)
    written = job.embed(output, work)
    totals = output.tidy(run)
    assert run.rows_removed == 8 and run.rows_reused == 0  # no carry-over pass here: every row re-encoded
    assert written.rows_written == 5 and totals.counters.rows_written == 5
    assert set(manifest(job)["retired_files"])  # a published output retires, never deletes
    assert manifest(job)["name_salt"]  # and new names never take a retired one


def test_a_file_that_appears_between_the_proof_and_the_mark_takes_the_mark_back(tmp_path, minilm_path):
    job = Job(tmp_path, minilm_path)
    write_shard(job.corpus / "s0.jsonl", [(f"a{i}", f"text {i}") for i in range(4)])
    output, work = job.begin()
    _, totals = job.prove(output, work)
    stray = job.out / "part-stray.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), stray)  # someone's file lands after the proof
    with pytest.raises(JobError, match="part-stray"):
        output.mark_complete(totals)
    assert not is_complete(output.state.storage)


def test_the_one_table_rule_is_checked_before_any_work(tmp_path, minilm_path):
    job = Job(tmp_path, minilm_path, iceberg_table="embeddings.docs")
    write_shard(job.corpus / "s0.jsonl", [("a0", "one record")])
    job.run()
    job.config = job.config.replace(iceberg_table="embeddings.other")
    write_shard(job.corpus / "s1.jsonl", [("b0", "new work to do")])
    with pytest.raises(UsageError, match=r"rerun with --iceberg-table embeddings\.docs,"):
        job.begin()
    assert not (job.out / "part-").exists() and len(list(job.out.glob("part-*.parquet"))) == 1


def test_a_shard_added_after_completion_is_embedded_on_rerun_alone(tmp_path, minilm_path):
    """(Was a scenario test through Ray: only the ledger decides this.) A complete output and a new
    shard: the rerun reads the new shard alone, records it as new, ends complete; then a no-op."""
    job = Job(tmp_path, minilm_path)
    ids = write_corpus(job.corpus, shards=2, per_shard=20)
    job.run()
    write_shard(job.corpus / "day-2.jsonl", [(f"n{i}", f"new text {i}") for i in range(7)])
    output, work = job.begin()
    assert not work.noop and work.new_shards == 1 and work.rows_skipped == 40
    assert [s.relpath for s in work.shards] == ["day-2.jsonl"]
    output, work = job.finish(output, work)
    assert sorted(output_ids(job.out)) == sorted(ids | {f"n{i}" for i in range(7)})
    m = manifest(job)
    assert m["complete"] and m["runs"][-1]["new_shards"] == 1 and m["runs"][-1]["rows_embedded"] == 7
    assert job.begin()[1].noop  # nothing changed now


def test_a_data_file_deleted_from_a_complete_output_is_embedded_again_not_a_noop(tmp_path, minilm_path):
    """(Was a scenario test through Ray.) A data file deleted after completion: its files are not
    those the proof was made over, so the output is checked again and the lost rows re-embedded."""
    job = Job(tmp_path, minilm_path)
    write_shard(job.corpus / "a.jsonl", [(f"d{i}", f"record number {i}") for i in range(24)])
    job.run()
    victim = sorted(job.out.glob("part-*.parquet"))[0]
    lost = pa.parquet.read_table(victim).num_rows
    victim.unlink()
    output, work = job.begin()
    assert not work.noop and work.rows_skipped == 24 - lost
    job.finish(output, work)
    assert sorted(output_ids(job.out)) == sorted(f"d{i}" for i in range(24))
    assert manifest(job)["runs"][-1]["rows_embedded"] == lost and is_complete(output.state.storage)
    assert job.begin()[1].noop  # unchanged since: a no-op again


def test_a_vanished_empty_shard_does_not_block_later_runs(tmp_path, minilm_path):
    """(Was a scenario test through Ray.) An empty shard deleted after a complete run: the plain
    run's refusal says --update; --update then really clears it, and the next day's incremental run
    is not refused for good."""
    job = Job(tmp_path, minilm_path)
    write_shard(job.corpus / "s0.jsonl", [(f"d{i}", f"record number {i}") for i in range(6)])
    (job.corpus / "empty.jsonl").write_text("")
    job.run()
    (job.corpus / "empty.jsonl").unlink()
    with pytest.raises(UsageError, match=r"no longer listed: .*empty\.jsonl.*use --update"):
        job.begin()
    plain = job.config
    job.config = plain.replace(update=True)  # the advice
    job.run()
    assert [Path(e["path"]).name for e in manifest(job)["input_shards"]] == ["s0.jsonl"]
    assert manifest(job)["complete"]
    job.config = plain
    write_shard(job.corpus / "s1.jsonl", [(f"n{i}", f"a new record {i}") for i in range(3)])
    job.run()  # the next day's incremental run
    assert manifest(job)["runs"][-1]["rows_embedded"] == 3 and manifest(job)["complete"]


def test_a_run_that_stopped_for_its_budget_is_recorded_stopped_and_refused_with_the_way_out(tmp_path, minilm_path):
    """The budget stop's end, without Ray: whole files of what was encoded, the run recorded as
    stopped, no _SUCCESS, and the message says how to resume; the rerun then finishes."""
    job = Job(tmp_path, minilm_path)
    write_shard(job.corpus / "s0.jsonl", [(f"a{i}", f"record {i}") for i in range(12)])
    output, work = job.begin()
    run = job.record(output)
    with pytest.raises(RuntimeError):
        job.embed(output, work, fail_after=1)  # the readers saw the stop after one block
    totals = output.tidy(run)
    with pytest.raises(JobError, match=r"stopped to keep to the budget \(cap reached\).*Rerun with a higher cap"):
        output.finish(run, Counters(rows_written=4), totals, output.duplicates(totals), stop_reason="cap reached")
    m = manifest(job)
    assert (m["runs"][-1]["status"], m["rows_written"], m["complete"]) == ("stopped", 4, False)
    assert not is_complete(output.state.storage)
    rerun, _ = job.run()
    assert manifest(job)["rows_written"] == 12 and is_complete(rerun.state.storage)

"""Keeping an output in step with a corpus that changes: --update and --reuse-from re-embed only
what changed and end exactly where a fresh run on the current corpus would. Real local Ray,
real weights, in-process runs."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from pipeline.errors import JobError, UsageError
from pipeline.runner import run_job
from tests.local_jobs import job_config


def write_docs(folder: Path, docs: dict[str, list[tuple[str, str]]]) -> None:
    """``{shard name: [(id, text), ...]}`` as JSONL shards."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in docs.items():
        (folder / name).write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows))


def corpus_v1() -> dict[str, list[tuple[str, str]]]:
    """3 shards of 20 records; s1 also holds a blank record (rejected)."""
    v1 = {f"s{s}.jsonl": [(f"d{s}-{i}", f"document {s} {i} about topic {i % 7}") for i in range(20)] for s in range(3)}
    v1["s1.jsonl"].append(("blank", " "))
    v1["s5.jsonl"] = []  # empty for now
    return v1


def corpus_v2() -> dict[str, list[tuple[str, str]]]:
    """s0 unchanged; s1 with 2 edited, 1 deleted and 2 added records; s2 gone; s3 new."""
    v1 = corpus_v1()
    s1 = [(i, t + " (edited)" if i in ("d1-3", "d1-4") else t) for i, t in v1["s1.jsonl"] if i != "d1-7"]
    s1 += [("d1-new-0", "a new record"), ("d1-new-1", "another new record")]
    return {"s0.jsonl": v1["s0.jsonl"], "s1.jsonl": s1, "s3.jsonl": [(f"d3-{i}", f"fresh {i}") for i in range(5)]}


def change_to_v2(corpus: Path) -> None:
    """s0 untouched, s1 rewritten, s2 deleted, s3 added."""
    (corpus / "s2.jsonl").unlink()
    write_docs(corpus, {k: v for k, v in corpus_v2().items() if k != "s0.jsonl"})


def vectors(out: Path) -> dict[str, np.ndarray]:
    table = pads.dataset(str(out), format="parquet").to_table(columns=["id", "embedding", "text_hash"])
    ids = table["id"].to_pylist()
    assert len(ids) == len(set(ids)), "an id twice"
    emb = np.asarray(table["embedding"].to_pylist(), dtype=np.float32)
    return dict(zip(ids, emb))


config = functools.partial(job_config, rows_per_file=16, max_bad_fraction=0.5)


@pytest.fixture(scope="module")
def embedder(minilm_path):
    from pipeline.stages.embedder import Embedder

    return Embedder(minilm_path, prefix="passage", max_length=512)


def assert_as_fresh(out: Path, corpus: Path, embedder) -> None:
    """The output holds exactly the corpus's current records, each with the vector a fresh
    embedding of its text gives (cosine >= 0.9999)."""
    records = [json.loads(line) for f in sorted(corpus.glob("*.jsonl")) for line in f.read_text().splitlines()]
    records = [r for r in records if r["text"].strip()]  # the blank one is a reject
    want = dict(zip([r["id"] for r in records], embedder.encode([r["text"] for r in records])))
    got = vectors(out)
    assert sorted(got) == sorted(want)
    cos = np.array([float(got[k] @ want[k]) for k in want])
    assert cos.min() >= 0.9999, cos.min()


@pytest.mark.scenario
def test_reuse_from_then_update_encode_only_what_changed_and_end_as_a_fresh_run(
    ray_cluster, tmp_path, minilm_path, embedder
):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_docs(corpus, corpus_v1())
    assert run_job(config(corpus, out, minilm_path)).status == "complete"

    # --reuse-from: the same records and two new ones, re-sharded into two files under a new prefix
    rows = [r for shard in corpus_v1().values() for r in shard] + [("n-0", "new text zero"), ("n-1", "new text one")]
    new_corpus, reused = tmp_path / "new-corpus", tmp_path / "reused"
    write_docs(new_corpus, {"a.jsonl": rows[:31], "b.jsonl": rows[31:]})
    summary = run_job(config(new_corpus, reused, minilm_path, reuse_from=(str(out),)))
    assert summary.status == "complete" and summary.rows_reused == 60 and summary.rows_embedded == 2
    assert_as_fresh(reused, new_corpus, embedder)

    # --update: the corpus changes under the first output
    change_to_v2(corpus)
    with pytest.raises(UsageError, match=r"changed since they were embedded.*--update"):
        run_job(config(corpus, out, minilm_path))
    summary = run_job(config(corpus, out, minilm_path, update=True))
    assert summary.status == "complete", summary
    # encoded: 2 edited + 2 added in s1, 5 in the new s3; carried: s1's 17 unchanged records
    assert summary.rows_embedded == 9 and summary.rows_reused == 17
    # s1's edited (2) and deleted (1) rows and its reject (read again: rejected again), all of vanished s2
    assert summary.rows_removed == 3 + 1 + 20 and summary.rows_rejected == 1
    assert "17 reused, 24 removed" in summary.line()
    run = json.loads((out / "_manifest.json").read_text())["runs"][-1]
    assert (run["rows_embedded"], run["rows_reused"], run["rows_removed"]) == (9, 17, 24)
    assert (out / "_SUCCESS").exists()
    rejects = pads.dataset(str(out / "_rejects"), format="parquet").to_table().to_pylist()
    assert [r["id"] for r in rejects] == ["blank"] and rejects[0]["row"] == 19  # its row in the new s1
    assert_as_fresh(out, corpus, embedder)
    assert run_job(config(corpus, out, minilm_path, update=True)).status == "noop"

    # a shard that was empty (no rows in any file) gains records: --update embeds them, not a no-op
    write_docs(corpus, {"s5.jsonl": [("d5-0", "a late first record")]})
    summary = run_job(config(corpus, out, minilm_path, update=True))
    assert (summary.status, summary.rows_embedded) == ("complete", 1)
    assert_as_fresh(out, corpus, embedder)


@pytest.mark.e2e  # a kill scenario (in-process, injected): with the other kills, outside `make test`
def test_a_crash_during_an_update_then_a_rerun_ends_exactly_once(
    ray_cluster, tmp_path, minilm_path, monkeypatch, embedder
):
    """Killed after the vectors were carried over (before encoding), then killed again half-way
    through removing the stale rows: no _SUCCESS; a plain rerun is refused (the footers show rows
    of the old corpus); --update finishes with every current record exactly once, nothing stale."""
    from pipeline.ledger.output import OutputState

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_docs(corpus, corpus_v1())
    assert run_job(config(corpus, out, minilm_path)).status == "complete"
    change_to_v2(corpus)

    real_plan = OutputState.plan_reads

    def crash_after_carry(self, work, shards, files=None):
        if files is None:  # the re-plan after the carry-over
            raise KeyboardInterrupt("killed (injected) after the carry-over")
        return real_plan(self, work, shards, files)

    monkeypatch.setattr(OutputState, "plan_reads", crash_after_carry)
    with pytest.raises((KeyboardInterrupt, JobError)):
        run_job(config(corpus, out, minilm_path, update=True))
    monkeypatch.undo()
    assert not (out / "_SUCCESS").exists()

    real_remove = OutputState.remove_stale

    def crash_mid_removal(self, work, metadata):
        assert len(work.stale) >= 2
        real_remove(self, dataclasses.replace(work, stale=work.stale[:1]), metadata)  # the first file is done...
        raise KeyboardInterrupt("killed (injected) mid-removal")  # ...then the process dies

    monkeypatch.setattr(OutputState, "remove_stale", crash_mid_removal)
    with pytest.raises((KeyboardInterrupt, JobError)):
        run_job(config(corpus, out, minilm_path, update=True))
    monkeypatch.undo()
    assert not (out / "_SUCCESS").exists()
    with pytest.raises(UsageError, match=r"as they were before a change \(or an --update that did not finish\)"):
        run_job(config(corpus, out, minilm_path))
    summary = run_job(config(corpus, out, minilm_path, update=True))
    assert summary.status == "complete" and summary.rows_embedded == 0  # everything was written before
    # s1's 17 unchanged records were carried over by the first, killed attempt: counted from the footers
    assert summary.rows_reused == 17, summary.line()
    assert_as_fresh(out, corpus, embedder)

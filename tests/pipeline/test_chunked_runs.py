"""Long documents as passages (``--chunk-tokens``), end to end on a real local Ray cluster: the
output contract on local files and S3, chunk settings as identity, and a SIGKILL mid-run."""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from e5tools.jobrun import job_argv
from e5tools.sample_text import passages
from pipeline.config import JobConfig
from pipeline.errors import UsageError
from pipeline.io import schemas
from pipeline.runner import run_job
from tests.pipeline.test_fault_tolerance import ENV, ROOT, kill_job
from tests.reference import reference_embeddings


def corpus_records(n: int = 24, seed: int = 0) -> list[dict]:
    """Documents of 1 to 14 real paragraphs (most well past 512 tokens), some with titles."""
    rng = random.Random(seed)
    paragraphs = [text for _, text in passages(400)]
    records = []
    for i in range(n):
        k = rng.randint(1, 14)
        start = rng.randrange(len(paragraphs) - k)
        record = {"id": f"doc-{i}", "text": "\n\n".join(paragraphs[start : start + k])}
        if i % 3 == 0:
            record["title"] = f"Document number {i}"
        records.append(record)
    records.append({"id": "no-text", "text": "   "})  # rejected, with its reason
    return records


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def check_chunked_output(table: pa.Table, records: list[dict], model_path: str, *, tokens: int, sample: int = 60):
    """The contract: (id, chunk) unique and contiguous, every non-space character in a window,
    windows within the size, embeddings equal to the card's code on their text."""
    good = {r["id"]: r for r in records if r["text"].strip()}
    rows = table.select(["id", "chunk", "char_start", "char_end", "n_tokens"]).to_pylist()
    keys = [(r["id"], r["chunk"]) for r in rows]
    assert len(keys) == len(set(keys))  # (id, chunk) is unique
    chunks = defaultdict(list)
    for r in rows:
        chunks[r["id"]].append(r)
    assert set(chunks) == set(good)  # every embeddable record, nothing else
    for record_id, windows in chunks.items():
        windows.sort(key=lambda r: r["chunk"])
        assert [w["chunk"] for w in windows] == list(range(len(windows)))
        text = good[record_id]["text"]
        covered = np.zeros(len(text), dtype=bool)
        for w in windows:
            covered[w["char_start"] : w["char_end"]] = True
            assert w["n_tokens"] <= tokens
        assert all(hit or c.isspace() for c, hit in zip(text, covered)), record_id
    picked = random.Random(1).sample(range(len(rows)), min(sample, len(rows)))
    inputs = []
    for i in picked:
        r = rows[i]
        record = good[r["id"]]
        title = record.get("title")
        inputs.append("passage: " + (f"{title} " if title else "") + record["text"][r["char_start"] : r["char_end"]])
    ref, lengths = reference_embeddings(model_path, inputs)
    ours = table["embedding"].combine_chunks().take(pa.array(picked)).values.to_numpy().reshape(len(picked), -1)
    assert (ours * ref).sum(axis=1).min() >= 0.9999
    assert [rows[i]["n_tokens"] for i in picked] == lengths.tolist()


@pytest.mark.scenario
def test_chunked_local_run_keeps_the_contract_and_its_settings(ray_cluster, tmp_path, minilm_path):
    records = corpus_records()
    write_jsonl(tmp_path / "corpus" / "a.jsonl", records[:12])
    write_jsonl(tmp_path / "corpus" / "b.jsonl", records[12:])
    out = tmp_path / "out"
    base = dict(
        inputs=(str(tmp_path / "corpus"),),
        output=str(out),
        model=minilm_path,
        progress=False,
        title_field="title",
        rows_per_block=4,
        rows_per_file=5,
        batch_size=16,
        chunk_tokens=128,
        chunk_overlap=16,
        max_bad_fraction=0.1,
    )
    summary = run_job(JobConfig(**base))
    assert summary.status == "complete" and summary.rows_embedded == len(records) - 1
    assert summary.rows_rejected == 1
    files = sorted(out.glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    assert table.schema.remove_metadata() == schemas.chunk_output_schema(384)
    check_chunked_output(table, records, minilm_path, tokens=128)
    # every record's windows in one file: a crash never leaves half a document
    homes = defaultdict(set)
    for f in files:
        for record_id in set(pq.read_table(f, columns=["id"])["id"].to_pylist()):
            homes[record_id].add(f.name)
    assert all(len(h) == 1 for h in homes.values()) and len(files) >= 4
    meta = json.loads(pq.read_schema(files[0]).metadata[b"e5_embed"])
    assert meta["chunking"] == {"tokens": 128, "overlap": 16, "max_chunks": 256}
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["rows_written"] == len(records) - 1 and manifest["chunks"] == table.num_rows
    assert manifest["tokens"] == sum(table["n_tokens"].to_pylist()) and manifest["chunks"] > 3 * len(records)
    assert (out / "_SUCCESS").exists()

    assert run_job(JobConfig(**base)).status == "noop"
    with pytest.raises(UsageError, match="different settings.*chunking"):
        run_job(JobConfig(**{**base, "chunk_overlap": 0}))
    with pytest.raises(UsageError, match="different settings.*chunking"):
        run_job(JobConfig(**{**base, "chunk_tokens": None}))  # a truncating run cannot extend it either

    # --update: b.jsonl rewritten with doc-12's title changed (the title is part of what the model
    # reads, so of its text_hash) and doc-13 deleted; every window of the 10 unchanged records is
    # carried over, doc-12 is windowed and encoded again
    changed = [dict(r, title="Document number 12, renamed") if r["id"] == "doc-12" else r for r in records]
    changed = [r for r in changed if r["id"] != "doc-13"]
    write_jsonl(tmp_path / "corpus" / "b.jsonl", changed[12:])
    summary = run_job(JobConfig(**base, update=True))
    assert (summary.status, summary.rows_embedded, summary.rows_reused, summary.rows_rejected) == ("complete", 1, 10, 1)
    files = sorted(out.glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    check_chunked_output(table, changed, minilm_path, tokens=128)


@pytest.mark.scenario
def test_chunked_s3_run_keeps_the_contract(ray_cluster, s3fs_client, bucket, minilm_path):
    fs = s3fs_client
    records = corpus_records(n=12, seed=3)
    fs.pipe(f"{bucket}/long/corpus.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    summary = run_job(
        JobConfig(
            inputs=(f"s3://{bucket}/long/corpus.jsonl",),
            output=f"s3://{bucket}/long-out/",
            model=minilm_path,
            progress=False,
            title_field="title",
            rows_per_file=4,
            chunk_tokens=256,
            max_bad_fraction=0.1,
        )
    )
    assert summary.status == "complete" and summary.rows_embedded == len(records) - 1
    fs.invalidate_cache()
    table = pads.dataset(f"{bucket}/long-out/", filesystem=fs, format="parquet").to_table()
    check_chunked_output(table, records, minilm_path, tokens=256, sample=30)
    assert fs.exists(f"{bucket}/long-out/_SUCCESS")


def _run_args(corpus: Path, out: Path, model: str, *extra: str) -> list[str]:
    chunking = ["--chunk-tokens", "96", "--chunk-overlap", "8", "--title-field", "title"]
    return job_argv(corpus, out, model, *chunking, "--max-bad-fraction", "0.1", *extra)


@pytest.mark.e2e
def test_sigkill_mid_chunked_run_then_rerun_gives_every_window_once(tmp_path, minilm_path):
    records = corpus_records(n=48, seed=5)[:-1]
    for s in range(4):
        write_jsonl(tmp_path / "corpus" / f"shard-{s}.jsonl", records[s::4])
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _run_args(tmp_path / "corpus", out, minilm_path, "--rows-per-block", "2", "--rows-per-file", "2"),
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and len(list(out.glob("part-*.parquet"))) < 5:
        time.sleep(0.05)
    time.sleep(random.Random(7).uniform(0, 0.3))
    stderr = kill_job(proc)
    before = list(out.glob("part-*.parquet"))
    done = {r for f in before for r in pq.read_table(f, columns=["id"])["id"].to_pylist()}
    assert 0 < len(done) < len(records), f"the kill should land mid-run; job said: {stderr[-3000:]}"
    assert not (out / "_SUCCESS").exists()

    rerun = subprocess.run(
        _run_args(tmp_path / "corpus", out, minilm_path), env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    table = pads.dataset(str(out), format="parquet").to_table()
    check_chunked_output(table, records, minilm_path, tokens=96, sample=20)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["runs"][-1]["rows_skipped"] == len(done)  # whole documents were skipped
    assert manifest["rows_written"] == len(records) and manifest["chunks"] == table.num_rows

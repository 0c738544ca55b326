"""The whole job on a real local Ray cluster, reading from and writing to S3 (moto's server)."""

import json

import duckdb
import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.config import JobConfig
from pipeline.io import schemas
from pipeline.runner import run_job
from tests.reference import reference_embeddings


def upload_corpus(fs, bucket, n_shards=3, per_shard=40):
    """Mixed lengths, including documents over 512 tokens; ids on some shards, derived on others."""
    texts = {}
    for s in range(n_shards):
        lines = []
        for i in range(per_shard):
            text = f"document {s}-{i} about topic {i % 7}. " + ("filler words go here " * (i * 9 % 160))
            if s == 0:
                lines.append(json.dumps({"id": f"doc-{s}-{i}", "text": text}))
                texts[f"doc-{s}-{i}"] = text
            else:
                lines.append(json.dumps({"text": text}))
                texts[f"part/shard-{s}.jsonl:{i}"] = text
        folder = "" if s == 0 else "part/"
        fs.pipe(f"{bucket}/corpus/{folder}shard-{s}.jsonl", ("\n".join(lines) + "\n").encode())
    return texts


def read_output(fs, bucket, prefix="out"):
    fs.invalidate_cache()
    return pads.dataset(f"{bucket}/{prefix}/", filesystem=fs, format="parquet").to_table()


@pytest.mark.integration
def test_s3_to_s3_every_id_once_matching_the_reference(ray_cluster, s3fs_client, bucket, minilm_path):
    fs = s3fs_client
    texts = upload_corpus(fs, bucket, per_shard=24)  # 72 documents, 3 files, some over 512 tokens
    config = JobConfig(
        inputs=(f"s3://{bucket}/corpus/",),
        output=f"s3://{bucket}/out/",
        model=minilm_path,
        progress=False,
        rows_per_block=16,
        rows_per_file=32,
        batch_size=8,
    )
    summary = run_job(config)
    assert summary.status == "complete" and summary.rows_embedded == len(texts)

    table = read_output(fs, bucket)
    ids = table["id"].to_pylist()
    assert sorted(ids) == sorted(texts) and len(ids) == len(set(ids))  # every id exactly once
    assert table.schema.field("embedding").type == schemas.embedding_type(384)
    assert table.schema.field("n_tokens").type.id == schemas.output_schema(384).field("n_tokens").type.id
    data_files = [p for p in fs.ls(f"{bucket}/out/") if p.endswith(".parquet")]
    assert len(data_files) >= 2 and all(p.rsplit("/", 1)[1].startswith("part-") for p in data_files)
    meta = json.loads(pq.read_schema(fs.open(data_files[0])).metadata[b"e5_embed"])
    assert isinstance(meta, dict) and meta["producer"] == "e5-embed"  # a JSON object, the job's own
    for key, value in {
        "prefix": "passage: ",
        "pooling": "mean",
        "normalized": True,
        "dim": 384,
        "max_length": 512,
        "dtype": "auto",  # as asked
        "compute_dtype": "float32",  # as resolved by the plan: what the vectors were computed in
        "device": "cpu",
        "revision": None,
    }.items():
        assert meta[key] == value

    manifest = json.loads(fs.cat(f"{bucket}/out/_manifest.json"))
    assert manifest["rows_written"] == len(texts) and manifest["rows_rejected"] == 0
    assert manifest["tokens"] == sum(table["n_tokens"].to_pylist())
    run = manifest["runs"][-1]
    assert run["rows_embedded"] == len(texts) and run["docs_per_s"] > 0 and run["tokens_per_s"] > 0
    assert run["started_at"] and run["ended_at"] and run["plan"]["device"] == "cpu"
    assert fs.exists(f"{bucket}/out/_SUCCESS")

    # parity on a sample: long (truncated) and short documents together
    sample = sorted(texts)[::9]
    ref, lengths = reference_embeddings(minilm_path, ["passage: " + texts[i] for i in sample])
    by_id = dict(zip(ids, np.asarray(table["embedding"].to_pylist(), dtype=np.float32)))
    ours = np.stack([by_id[i] for i in sample])
    assert ((ours * ref).sum(axis=1)).min() >= 0.99999
    assert table["truncated"].to_pylist().count(True) > 0

    # a downstream reader sees the folder as-is (side files start with "_")
    local = fs.ls(f"{bucket}/out/")
    assert {p.rsplit("/", 1)[1] for p in local} >= {"_manifest.json", "_SUCCESS"}


@pytest.mark.integration
def test_downstream_duckdb_reads_local_output(ray_cluster, tmp_path, minilm_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("".join(f"line number {i}\n" for i in range(30)))
    out = tmp_path / "out"
    run_job(
        JobConfig(inputs=(str(corpus),), output=str(out), model=minilm_path, progress=False, output_dtype="float16")
    )
    con = duckdb.connect()
    n, dim = con.execute(f"select count(*), max(len(embedding)) from read_parquet('{out}/*.parquet')").fetchone()
    assert (n, dim) == (30, 384)
    assert pads.dataset(str(out), format="parquet").count_rows() == 30
    assert pq.read_schema(next(out.glob("part-*.parquet"))).field("embedding").type == schemas.embedding_type(
        384, "float16"
    )


@pytest.mark.rehearsal
def test_compiled_encoder_matches_the_reference(ray_cluster, tmp_path, minilm_path):
    """--compile (torch.compile, dynamic shapes) changes speed, not the embeddings."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    texts = [f"passage number {i} " + "more words here " * (i * 7 % 40) for i in range(24)]
    (corpus / "a.jsonl").write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))
    summary = run_job(
        JobConfig(
            inputs=(str(corpus),),
            output=str(tmp_path / "out"),
            model=minilm_path,
            progress=False,
            compile=True,
            batch_size=8,
        )
    )
    assert summary.status == "complete" and summary.rows_embedded == len(texts)
    table = pads.dataset(str(tmp_path / "out"), format="parquet").to_table().sort_by("id")
    ours = np.asarray(table["embedding"].to_pylist(), dtype=np.float32)
    ref, _ = reference_embeddings(minilm_path, ["passage: " + texts[int(i)] for i in table["id"].to_pylist()])
    assert (ours * ref).sum(1).min() >= 0.9999


@pytest.mark.integration
def test_out_of_memory_splits_are_counted_in_the_run_record(ray_cluster, minilm_path, tmp_path, monkeypatch):
    """An encode actor that runs out of device memory (injected) splits and retries; the run record says
    how often, and every row is still embedded."""
    from tests.faults import OutOfMemoryAbove

    monkeypatch.setattr("pipeline.planning.plan.EncodeStage", OutOfMemoryAbove)  # above 2 rows
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"text": f"document {i} " * (i + 1)}) + "\n" for i in range(12))
    )
    config = JobConfig(
        inputs=(str(tmp_path / "in.jsonl"),),
        output=str(tmp_path / "out"),
        model=minilm_path,
        progress=False,
        batch_size=8,
    )
    summary = run_job(config)
    assert summary.status == "complete" and summary.rows_embedded == 12
    run = json.loads((tmp_path / "out" / "_manifest.json").read_text())["runs"][-1]
    assert run["oom_splits"] >= 2  # 8 rows -> 4+4 -> 2+2+2+2 at least once

"""A shard put back on S3 byte for byte (its old ETag) after --update retired its rows: the
publisher's retired names are never taken again. Whole runs through the runner, their passes in
this process; S3 is the session's moto server (integration: its ETags are the point)."""

from __future__ import annotations

import functools
import json

import pytest

from pipeline import runner
from tests.local_jobs import InProcessBackend
from tests.pipeline.ledger.test_table import config, ids, table

pytestmark = pytest.mark.integration
run_job = functools.partial(runner.run_job, backend=InProcessBackend)


def test_a_shard_that_vanishes_and_comes_back_with_the_same_etag_is_embedded_again(
    tmp_path, minilm_path, bucket, s3fs_client
):
    """On S3 a shard put back byte for byte has its old ETag: its rows get the same digest as the
    file --update retired. Retiring a name changes the name salt, so the new file has a name of its
    own; every later run, plain or --update, finds the output complete. (Four records a shard, four
    rows a file: each file holds one shard's rows, so the returning rows' digest is the retired file's.)"""
    corpus, out = f"s3://{bucket}/corpus", tmp_path / "out"
    body = "".join(json.dumps({"id": f"b{i}", "text": f"second shard record {i}"}) + "\n" for i in range(4))
    s3fs_client.pipe(
        f"{bucket}/corpus/s0.jsonl",
        b"".join((json.dumps({"id": f"a{i}", "text": f"first shard record {i}"}) + "\n").encode() for i in range(4)),
    )
    s3fs_client.pipe(f"{bucket}/corpus/s1.jsonl", body.encode())
    s3fs_client.invalidate_cache()
    assert run_job(config(corpus, out, minilm_path)).status == "complete"
    s3fs_client.rm(f"{bucket}/corpus/s1.jsonl")
    s3fs_client.invalidate_cache()
    assert run_job(config(corpus, out, minilm_path, update=True)).status == "complete"
    retired = set(json.loads((out / "_manifest.json").read_text())["retired_files"])
    assert retired  # s1's file, kept for the first snapshot
    s3fs_client.pipe(f"{bucket}/corpus/s1.jsonl", body.encode())  # back, identical: the same ETag
    s3fs_client.invalidate_cache()
    back = run_job(config(corpus, out, minilm_path, update=True))
    assert back.status == "complete" and back.rows_embedded + back.rows_reused == 4
    current = {task.file.file_path.removeprefix("file://") for task in table(out).scan().plan_files()}
    assert not current & retired  # never a retired name
    assert run_job(config(corpus, out, minilm_path)).status == "noop"
    assert run_job(config(corpus, out, minilm_path, update=True)).status == "noop"
    assert ids(table(out).scan().to_arrow()) == sorted([f"a{i}" for i in range(4)] + [f"b{i}" for i in range(4)])

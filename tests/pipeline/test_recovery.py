"""Exactly-once, round 3: fingerprints that cannot collide, recovery that always has a way out,
errors that say whether to retry. Each test tries to break one guarantee as an operator or an
attacker would; where a refusal names an action, the test follows it and checks it succeeds.
Real local Ray, real weights, moto's S3 server behind a fault-injecting proxy; in-process runs,
except where the CLI's exit code (or a fresh Hub client) is what is tested; the stories only the
ledger decides (unit) run their passes in this process too (InProcessBackend)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.errors import JobError, TransientError, UsageError
from pipeline.io import schemas
from pipeline.runner import run_job
from tests.faulty_proxy import FaultyProxy
from tests.local_jobs import InProcessBackend, job_config

ROOT = Path(__file__).resolve().parents[2]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


config = functools.partial(job_config, rows_per_file=8)
# the stories only the ledger decides: whole runs through the runner, their passes in this process
in_process = functools.partial(run_job, backend=InProcessBackend)


def embeddings(out: Path, key=("id",)) -> dict:
    table = pads.dataset(sorted(map(str, out.glob("part-*.parquet"))), format="parquet").to_table()
    keys = zip(*(table[k].to_pylist() for k in key))
    return dict(zip(keys, np.asarray(table["embedding"].to_pylist(), dtype=np.float32)))


# ---------------------------------------------------------------------------- silent wrong data


@pytest.mark.scenario
def test_nul_characters_never_let_two_chunked_records_share_a_fingerprint(ray_cluster, tmp_path, minilm_path):
    """title="data", text="base\\0systems ..." and title="data\\0base", text="systems ..." hashed alike
    under the NUL join, though the model reads "data basesystems" and "database systems": --update
    carried the old vector over. Now the edited record is encoded again, equal to a fresh run."""
    corpus, out, fresh = tmp_path / "corpus", tmp_path / "out", tmp_path / "fresh"
    tail = "systems store and query large collections of records in many tables"
    other = {"id": "y", "title": "other", "text": "an unrelated record about rivers and their deltas"}
    write_jsonl(corpus / "a.jsonl", [{"id": "x", "title": "data", "text": "base\0" + tail}, other])
    chunked = dict(chunk_tokens=64, chunk_overlap=8, title_field="title")
    assert run_job(config(corpus, out, minilm_path, **chunked)).status == "complete"

    write_jsonl(corpus / "a.jsonl", [{"id": "x", "title": "data\0base", "text": tail}, other])
    summary = run_job(config(corpus, out, minilm_path, update=True, **chunked))
    assert (summary.status, summary.rows_embedded, summary.rows_reused) == ("complete", 1, 1)
    assert run_job(config(corpus, fresh, minilm_path, **chunked)).status == "complete"
    got, want = embeddings(out, ("id", "chunk")), embeddings(fresh, ("id", "chunk"))
    assert got.keys() == want.keys()
    for key, vector in want.items():
        assert float(np.dot(got[key], vector)) > 0.9999, key


@pytest.mark.scenario
def test_a_reuse_source_overwritten_after_its_check_lends_nothing(ray_cluster, tmp_path, minilm_path, monkeypatch):
    """The source was checked, then overwritten by another model under the same file names before
    its rows were read: each file's footer is checked again as it is read."""
    import pipeline.ledger.run as ledger_run

    corpus, source, out = tmp_path / "corpus", tmp_path / "source", tmp_path / "out"
    write_jsonl(
        corpus / "a.jsonl", [{"id": f"d{i}", "text": f"record number {i} about topic {i % 3}"} for i in range(12)]
    )
    assert run_job(config(corpus, source, minilm_path)).status == "complete"
    real = ledger_run.reuse_from_pool

    def checked_then_overwritten(*args, **kwargs):
        pool = real(*args, **kwargs)
        for f in source.glob("part-*.parquet"):  # "another model" republishes the same names
            table = pq.read_table(f)
            meta = dict(table.schema.metadata)
            made = json.loads(meta[schemas.METADATA_KEY])
            meta[schemas.METADATA_KEY] = json.dumps({**made, "model_sha": "sha256:" + "e" * 64}).encode()
            pq.write_table(table.replace_schema_metadata(meta), f)
        return pool

    monkeypatch.setattr(ledger_run, "reuse_from_pool", checked_then_overwritten)
    with pytest.raises(JobError, match="changed after it was checked.*model_sha"):
        run_job(config(corpus, out, minilm_path, reuse_from=(str(source),)))
    assert not (out / "_SUCCESS").exists()
    assert not list(out.glob("part-*.parquet"))  # not one row of the other model's


@pytest.mark.unit  # the ledger decides: passes in this process
def test_no_success_over_a_foreign_part_file_and_the_advice_works(tmp_path, minilm_path):
    """A part-*.parquet someone else put in the output: a reader globbing part-*.parquet would take
    its rows for the output's. The run refuses completion naming it; after the advice (delete it,
    run again) the rerun completes and the glob reads exactly the corpus."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    records = [{"id": f"d{i}", "text": f"record number {i}"} for i in range(10)]
    write_jsonl(corpus / "a.jsonl", records)
    out.mkdir()
    pq.write_table(pa.table({"id": ["intruder"], "embedding": [[0.0] * 384]}), out / "part-foreign.parquet")
    with pytest.raises(UsageError, match=r"did not write \(e\.g\. .*part-foreign\.parquet.*move or delete") as caught:
        in_process(config(corpus, out, minilm_path))
    assert caught.value.exit_code == 2 and not (out / "_SUCCESS").exists()
    (out / "part-foreign.parquet").unlink()
    summary = in_process(config(corpus, out, minilm_path))
    assert summary.status == "complete" and (out / "_SUCCESS").exists()
    assert sorted(embeddings(out)) == sorted((r["id"],) for r in records)
    # readers as the README says (issue 38, F6): the data files are the top-level part-*.parquet;
    # `out/**/*.parquet` would take _rejects/ too, and a bare folder meets _manifest.json
    import duckdb
    import polars as pl

    glob = f"{out}/part-*.parquet"
    assert duckdb.connect().execute(f"select count(*) from read_parquet('{glob}')").fetchone()[0] == len(records)
    assert pl.read_parquet(glob).height == len(records)


@pytest.mark.unit  # the ledger decides: passes in this process
def test_a_damaged_reuse_source_is_a_usage_error_naming_the_source_and_the_file(tmp_path, minilm_path):
    corpus, source, out = tmp_path / "corpus", tmp_path / "source", tmp_path / "out"
    write_jsonl(corpus / "a.jsonl", [{"id": f"d{i}", "text": f"record number {i}"} for i in range(10)])
    assert in_process(config(corpus, source, minilm_path)).status == "complete"
    damaged = sorted(source.glob("part-*.parquet"))[0]
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])  # cut short
    with pytest.raises(UsageError) as caught:
        in_process(config(corpus, out, minilm_path, reuse_from=(str(source),)))
    message = str(caught.value)
    assert caught.value.exit_code == 2 and str(source) in message and damaged.name in message


# ---------------------------------------------------------------------------- exit codes that tell the truth


def _down_for(proxy_keys: str):
    """A store down for the requests whose path holds ``proxy_keys`` (every one for "")."""
    return lambda method, path: proxy_keys in path


@pytest.mark.scenario
@pytest.mark.parametrize("step", ["list inputs", "read the manifest", "read a --reuse-from source"])
def test_a_store_down_for_a_moment_at_start_up_is_exit_1(
    ray_cluster, s3_server, s3fs_client, bucket, tmp_path, minilm_path, step
):
    """503 SlowDown on every request of one start-up step (after the client's own retries): a
    retry later may work, so exit 1 (Airflow and KubeRay retry), never 2 ("fix your settings")."""
    fs = s3fs_client
    records = [{"id": f"d{i}", "text": f"record number {i}"} for i in range(6)]
    write_jsonl(tmp_path / "corpus" / "a.jsonl", records)
    fs.pipe(f"{bucket}/in/a.jsonl", (tmp_path / "corpus" / "a.jsonl").read_bytes())
    if step == "read a --reuse-from source":  # a complete source, made through the store directly
        assert run_job(config(tmp_path / "corpus", f"s3://{bucket}/source/", minilm_path)).status == "complete"
    doomed = {"list inputs": "in", "read the manifest": "_manifest.json", "read a --reuse-from source": "source"}[step]
    with FaultyProxy(s3_server.host, s3_server.port, fail_every=0, fail_when=_down_for(doomed)) as proxy:
        options = {"endpoint_url": proxy.endpoint_url, "config_kwargs": {"retries": {"max_attempts": 2}}}
        kw: dict = {"storage_options": options}
        inputs, out = tmp_path / "corpus", f"s3://{bucket}/out/"
        if step == "list inputs":
            inputs, out = f"s3://{bucket}/in/", tmp_path / "out"
        if step == "read a --reuse-from source":
            out, kw["reuse_from"] = tmp_path / "out", (f"s3://{bucket}/source/",)
        with pytest.raises(TransientError) as caught:
            run_job(config(inputs, out, minilm_path, **kw))
        assert proxy.injected > 0
    assert caught.value.exit_code == 1 and "a retry may succeed" in str(caught.value)
    assert {"list inputs": "input", "read the manifest": "output", "read a --reuse-from source": "--reuse-from"}[
        step
    ] in str(caught.value)


@pytest.mark.scenario
def test_writes_refused_by_the_store_say_so_with_the_path_in_one_line_and_exit_2(
    ray_cluster, s3_server, bucket, tmp_path, minilm_path
):
    """A 403 AccessDenied on every data file's upload (a bucket policy that refuses the output's
    keys): the error keeps its cause ("Access Denied") and the key it was refused, not only Ray's
    task header; no terminal colour codes; one line; exit 2, since no retry grants a permission."""
    write_jsonl(tmp_path / "corpus" / "a.jsonl", [{"id": f"d{i}", "text": f"record {i}"} for i in range(6)])
    refused = lambda method, path: method == "PUT" and "/part-" in path  # noqa: E731
    with FaultyProxy(s3_server.host, s3_server.port, fail_every=0, deny_when=refused) as proxy:
        options = {"endpoint_url": proxy.endpoint_url}
        with pytest.raises(UsageError) as caught:
            run_job(config(tmp_path / "corpus", f"s3://{bucket}/out/", minilm_path, storage_options=options))
        assert proxy.injected > 0
    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert "Access Denied" in message and f"{bucket}/out/part-" in message, message
    assert "\x1b" not in message and "\n" not in message and "ray::" not in message, message


@pytest.mark.e2e
@pytest.mark.parametrize("status, code, label", [(503, 1, "temporary failure"), (404, 2, "error")])
def test_a_hub_that_fails_for_a_moment_is_exit_1_and_a_missing_model_exit_2(tmp_path, status, code, label):
    """The CLI as users run it, against a 'Hub' on loopback (a fresh process: the Hub client reads
    its endpoint at import). 503: a retry may work (exit 1); 404: the model does not exist (exit 2)."""
    import http.server
    import sys

    from tests.httpserve import serving

    class Hub(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = do_POST = _answer

        def log_message(self, *args):
            pass

    write_jsonl(tmp_path / "in.jsonl", [{"text": "one record"}])
    with serving(Hub) as endpoint:
        env = {
            **os.environ,
            "RAY_ADDRESS": "",
            "HF_HUB_OFFLINE": "0",
            "HF_ENDPOINT": endpoint,
            "HF_HUB_CACHE": str(tmp_path / "hub"),
            "HF_HUB_ETAG_TIMEOUT": "2",
            "HF_HUB_DOWNLOAD_TIMEOUT": "2",
        }
        argv = [sys.executable, "-m", "pipeline", "run", "--input", str(tmp_path / "in.jsonl")]
        argv += ["--output", str(tmp_path / "out"), "--model", "acme/e5-test", "--no-progress"]
        done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == code, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith(f"e5-embed: {label}: cannot fetch model 'acme/e5-test'")

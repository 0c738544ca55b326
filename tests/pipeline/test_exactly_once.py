"""Exactly-once under what operators do: overlapping runs, a changing corpus, cut shards, odd
records and paths, interrupted --overwrite, secrets. Real processes, real local Ray, moto's S3;
the stories that only the ledger decides (unit) run their passes in this process (InProcessBackend).

Each test reproduces a way the job used to end with exit 0 and ``_SUCCESS`` over wrong data.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.config import JobConfig
from pipeline.errors import JobError, UsageError
from pipeline.io.storage import ScrubFilter, Storage
from pipeline.runner import run_job
from tests.clirun import run_cli
from tests.local_jobs import InProcessBackend, job_config, output_ids, write_corpus
from tests.rewrites import rewrite_keeping_size_and_mtime

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}
# the stories only the ledger decides: whole runs through the runner, their passes in this process
in_process = functools.partial(run_job, backend=InProcessBackend)


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--no-progress", *args],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


config = job_config


def assert_exactly(out: Path, ids: set[str]) -> None:
    got = output_ids(out)
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))


@pytest.mark.e2e
def test_two_runs_at_once_one_writes_the_other_refuses_or_waits(tmp_path, minilm_path):
    """An Airflow retry while the first job still runs, with other flags: it must not write."""
    ids = write_corpus(tmp_path / "corpus", shards=3, per_shard=40)
    out = tmp_path / "out"
    common = ("--input", str(tmp_path / "corpus"), "--output", str(out), "--model", minilm_path)
    first = cli(*common, "--rows-per-file", "8", "--batch-size", "4")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list((out / "_lease").glob("*.json")):
            time.sleep(0.1)
        assert first.poll() is None, first.communicate()[1][-2000:]
        second = cli(*common, "--rows-per-file", "3")
        _, err = second.communicate(timeout=300)
        assert second.returncode == 1, err[-2000:]
        line = err.strip().splitlines()[-1]
        assert line.startswith("e5-embed: job failed: ") and "is being written by run" in line
        waiter = cli(*common, "--lease-wait-s", "600")
        assert first.wait(timeout=600) == 0, first.communicate()[1][-3000:]
        out_w, err_w = waiter.communicate(timeout=600)
        assert waiter.returncode == 0 and "already complete" in out_w, err_w[-3000:]
    finally:
        for proc in (first,):
            if proc.poll() is None:
                proc.kill()
    assert_exactly(out, ids)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert len(manifest["runs"]) == 1 and manifest["rows_written"] == len(ids)
    assert all(len(pq.read_table(p)) <= 8 for p in out.glob("part-*.parquet"))  # only the first run's files


@pytest.mark.unit  # the ledger decides: passes in this process
def test_a_shard_changed_or_gone_is_refused_until_overwrite(tmp_path, minilm_path):
    write_corpus(tmp_path / "corpus", shards=2, per_shard=20)
    out = tmp_path / "out"
    assert in_process(config(tmp_path / "corpus", out, minilm_path, rows_per_file=8)).status == "complete"
    # the durable state of a crash part-way: no _SUCCESS, some files missing
    (out / "_SUCCESS").unlink()
    for path in sorted(out.glob("part-*.parquet"))[:2]:
        path.unlink()
    # the shard is regenerated before the resume (other texts under the same (source, row)) and put
    # in place with `cp -p`: same size, same mtime; only its inode/ctime can tell
    rewrite_keeping_size_and_mtime(tmp_path / "corpus" / "shard-1.jsonl", "cp -p")
    with pytest.raises(UsageError, match=r"1 changed since they were embedded: .*shard-1\.jsonl"):
        in_process(config(tmp_path / "corpus", out, minilm_path, rows_per_file=8))
    assert not (out / "_SUCCESS").exists()
    (tmp_path / "corpus" / "shard-0.jsonl").unlink()
    with pytest.raises(UsageError, match=r"no longer listed: .*shard-0\.jsonl"):
        in_process(config(tmp_path / "corpus", out, minilm_path, rows_per_file=8))
    summary = in_process(config(tmp_path / "corpus", out, minilm_path, rows_per_file=8, overwrite=True))
    assert summary.status == "complete"
    lines = (tmp_path / "corpus" / "shard-1.jsonl").read_text().splitlines()
    assert_exactly(out, {json.loads(line)["id"] for line in lines})


@pytest.mark.unit  # the ledger decides: passes in this process
def test_a_cut_shard_fails_the_job_unless_remainders_are_accepted(tmp_path, minilm_path):
    """A .jsonl.gz cut to 20% of its bytes used to pass as '1 rejected' with _SUCCESS."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    raw = "".join(
        json.dumps({"id": f"c{i}", "text": f"record {i} " + "x" * (i % 50) + f" {i * 7919 % 10007}"}) + "\n"
        for i in range(300)
    ).encode()
    data = gzip.compress(raw)
    (corpus / "cut.jsonl.gz").write_bytes(data[: len(data) // 5])
    hostile = [
        json.dumps({"id": "ok", "text": "fine"}).encode(),
        b"[" * 100_000,
        b'{"text": 1' + b"0" * 5000 + b"}",
        json.dumps({"id": "ok2", "text": "also fine"}).encode(),
    ]
    (corpus / "hostile.jsonl").write_bytes(b"\n".join(hostile) + b"\n")
    out = tmp_path / "out"
    with pytest.raises(JobError, match=r"no _SUCCESS: 1 shard\(s\) with an undecodable remainder .*cut\.jsonl\.gz"):
        in_process(config(corpus, out, minilm_path, max_bad_fraction=1.0))
    assert not (out / "_SUCCESS").exists()
    decoded = len(output_ids(out)) - 2
    assert 0 < decoded < 300
    rejects = pq.read_table(out / "_rejects").to_pylist()
    assert sorted(r["row"] for r in rejects) == [1, 2]  # the two odd records, one by one; no remainder "record"
    summary = in_process(config(corpus, out, minilm_path, max_bad_fraction=1.0, skip_corrupt_remainders=True))
    assert summary.status == "complete" and summary.rows_embedded == 0  # nothing re-read, nothing new
    manifest = json.loads((out / "_manifest.json").read_text())
    [remainder] = manifest["corrupt_remainders"]
    assert remainder["path"].endswith("cut.jsonl.gz") and remainder["rows_before"] == decoded
    assert (out / "_SUCCESS").exists()


@pytest.mark.scenario
def test_output_paths_with_glob_characters_are_literal_on_s3(ray_cluster, s3fs_client, bucket, minilm_path):
    fs = s3fs_client
    for s in range(2):
        fs.pipe(
            f"{bucket}/in/{s}.jsonl",
            "".join(json.dumps({"id": f"g{s}-{i}", "text": f"glob {i}"}) + "\n" for i in range(6)).encode(),
        )
    base = dict(inputs=(f"s3://{bucket}/in/",), model=minilm_path, progress=False)
    assert run_job(JobConfig(output=f"s3://{bucket}/o7a/", **base)).status == "complete"
    fs.invalidate_cache()
    o7a = sorted(fs.ls(f"{bucket}/o7a/"))
    tricky = run_job(JobConfig(output=f"s3://{bucket}/o7[ab]/", **base))
    assert tricky.status == "complete" and tricky.rows_embedded == 12  # its own output, not o7a's
    assert run_job(JobConfig(output=f"s3://{bucket}/o7[ab]/", overwrite=True, **base)).rows_embedded == 12
    fs.invalidate_cache()
    assert sorted(fs.ls(f"{bucket}/o7a/")) == o7a  # --overwrite on 'o7[ab]' left 'o7a' alone
    got = pads.dataset(f"{bucket}/o7[ab]/", filesystem=fs, format="parquet").to_table(columns=["id"])
    assert sorted(got["id"].to_pylist()) == sorted(f"g{s}-{i}" for s in range(2) for i in range(6))


@pytest.mark.unit  # the ledger decides: passes in this process
def test_interrupted_overwrite_never_leaves_success_and_spares_foreign_files(tmp_path, minilm_path, monkeypatch):
    ids = write_corpus(tmp_path / "corpus", shards=2, per_shard=12)
    out = tmp_path / "out"
    assert in_process(config(tmp_path / "corpus", out, minilm_path, rows_per_file=4)).status == "complete"
    foreign = out / "part-not-ours.parquet"  # someone else's file in the folder
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    real_delete, calls = Storage.delete, []

    def crash_after_two(self, path):
        calls.append(path)
        if len(calls) > 2:
            raise OSError("simulated crash during --overwrite")
        return real_delete(self, path)

    monkeypatch.setattr(Storage, "delete", crash_after_two)
    with pytest.raises(Exception, match="simulated crash"):
        in_process(config(tmp_path / "corpus", out, minilm_path, rows_per_file=4, overwrite=True))
    monkeypatch.setattr(Storage, "delete", real_delete)
    assert not (out / "_SUCCESS").exists()  # gone first, before any data
    with pytest.raises(UsageError, match="did not finish; run again with --overwrite"):
        in_process(config(tmp_path / "corpus", out, minilm_path, rows_per_file=4))
    # the overwrite finishes its work but refuses _SUCCESS over someone else's part file (spared)
    with pytest.raises(UsageError, match=r"did not write \(e\.g\. .*part-not-ours\.parquet.*move or delete"):
        in_process(config(tmp_path / "corpus", out, minilm_path, rows_per_file=4, overwrite=True))
    assert foreign.exists() and not (out / "_SUCCESS").exists()
    foreign.rename(tmp_path / "part-not-ours.parquet")  # the advice, followed
    assert in_process(config(tmp_path / "corpus", out, minilm_path, rows_per_file=4)).status == "complete"
    got = [i for p in out.glob("part-*.parquet") for i in pq.read_table(p)["id"].to_pylist()]
    assert sorted(got) == sorted(ids)  # a glob under _SUCCESS reads exactly the output


@pytest.mark.unit
def test_output_inside_input_and_input_inside_output_are_refused(tmp_path, minilm_path):
    write_corpus(tmp_path / "corpus", shards=1, per_shard=2)
    with pytest.raises(UsageError, match="lies inside --input"):
        run_job(config(tmp_path / "corpus", tmp_path / "corpus" / "emb", minilm_path))
    with pytest.raises(UsageError, match="lies inside --output"):
        run_job(config(tmp_path / "corpus", tmp_path, minilm_path))
    with pytest.raises(UsageError, match="lies inside --input"):  # spelled differently, same place
        run_job(config(f"{tmp_path}/./corpus/", f"{tmp_path}/corpus//emb", minilm_path))


@pytest.mark.unit  # the ledger decides: passes in this process
def test_within_file_duplicate_rows_are_repaired_on_rerun(tmp_path, minilm_path):
    ids = write_corpus(tmp_path / "corpus", shards=1, per_shard=10)
    out = tmp_path / "out"
    assert in_process(config(tmp_path / "corpus", out, minilm_path, rows_per_file=5)).status == "complete"
    # a file holding rows 0,1,1,2,3 (and its sibling 4..) as a buggy or replayed writer might leave
    from pipeline.io.sink import file_stats, put_file

    victim = min(out.glob("part-*.parquet"), key=lambda p: pq.read_table(p)["row"].to_pylist()[0])
    table = pq.read_table(victim)
    doubled = pa.concat_tables([table, table.slice(1, 1)]).replace_schema_metadata(None)
    metadata = json.loads(table.schema.metadata[b"e5_embed"])
    versions = json.loads(table.schema.metadata[b"e5_embed_versions"])
    victim.unlink()
    put_file(Storage(str(out)), "", doubled, metadata, file_stats(doubled), versions)
    (out / "_SUCCESS").unlink()
    summary = in_process(config(tmp_path / "corpus", out, minilm_path, rows_per_file=5))
    assert summary.status == "complete"
    assert_exactly(out, ids)
    assert json.loads((out / "_manifest.json").read_text())["repaired_files"] == 1


@pytest.mark.scenario
def test_secrets_nested_in_options_or_in_uris_reach_no_log_error_or_output(
    ray_cluster, s3_server, s3fs_client, bucket, tmp_path, minilm_path, caplog
):
    fs = s3fs_client
    fs.pipe(f"{bucket}/in/a.jsonl", b'{"id": "s1", "text": "secret handling"}\n')
    secret = "NESTED-SESSION-TOKEN-42"
    options = {
        "key": "testing",
        "secret": "SECRET-ACCESS-KEY-43",
        "client_kwargs": {"region_name": "us-east-1", "aws_session_token": secret},
    }
    out = tmp_path / "out"
    caplog.set_level("DEBUG")  # even botocore's request dumps (which print the session token) ...
    caplog.handler.addFilter(ScrubFilter())  # ... pass the filter the CLI puts on its log handler
    run_job(
        JobConfig(
            inputs=(f"s3://{bucket}/in/",), output=str(out), model=minilm_path, progress=False, storage_options=options
        )
    )
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    for value in (secret, "SECRET-ACCESS-KEY-43"):
        assert value.encode() not in written and value not in caplog.text
    # a failing run: the error line names no secret, also not one written inside the URI
    options_file = tmp_path / "opts.json"
    options_file.write_text(json.dumps(options))
    failed = run_cli(
        "run",
        "--no-progress",
        "--input",
        f"s3://AKIAUSER:URI-PASSWORD-44@{bucket}/missing/",
        "--output",
        str(tmp_path / "o2"),
        "--model",
        minilm_path,
        "--storage-options",
        f"@{options_file}",
    )
    err = failed.stderr
    assert failed.returncode == 2 and err.strip().splitlines()[-1].startswith("e5-embed: error: "), err[-2000:]
    for value in (secret, "SECRET-ACCESS-KEY-43", "URI-PASSWORD-44", "AKIAUSER"):
        assert value not in err and value not in caplog.text


@pytest.mark.unit  # the ledger decides: passes in this process
def test_a_model_changed_between_crash_and_resume_is_refused(tmp_path, minilm_path):
    import shutil

    model = shutil.copytree(minilm_path, tmp_path / "model")
    write_corpus(tmp_path / "corpus", shards=1, per_shard=6)
    out = tmp_path / "out"
    assert in_process(config(tmp_path / "corpus", out, str(model))).status == "complete"
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["metadata"]["model_sha"].startswith("sha256:")
    (out / "_SUCCESS").unlink()  # the durable state of a crash before the end
    (model / "README.md").write_text("the weights were replaced upstream")
    with pytest.raises(UsageError, match="different settings.*model_sha"):
        in_process(config(tmp_path / "corpus", out, str(model)))
    # an output made before model digests were recorded: no model of the same name passes silently
    manifest["metadata"].pop("model_sha")
    (out / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="made before this job recorded model digests"):
        in_process(config(tmp_path / "corpus", out, str(model)))


@pytest.mark.unit  # the ledger decides: passes in this process
def test_damaged_bookkeeping_is_named_and_overwrite_recovers(tmp_path, minilm_path, caplog):
    """A truncated manifest, shard record or lease file: a plain rerun exits 2 naming the file and
    the way out, and --overwrite recovers. A deleted manifest does not hide mixed settings (another
    --prefix is refused): the footers are checked, and with the same settings the manifest is rebuilt
    from them. A rerun of the complete output is a no-op."""
    ids = write_corpus(tmp_path / "corpus", shards=2, per_shard=12)
    out = tmp_path / "out"

    def run(**kw):
        return in_process(config(tmp_path / "corpus", out, minilm_path, rows_per_file=8, **kw))

    assert run().status == "complete"
    manifest = out / "_manifest.json"
    whole = manifest.read_bytes()
    manifest.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UsageError, match=r"_manifest\.json is damaged .*--overwrite"):
        run()
    manifest.unlink()  # lost: the next run must not take other settings for the old ones
    with pytest.raises(UsageError, match=r"part-\w+\.parquet was made with different settings \(prefix: 'passage: '"):
        run(prefix="query")
    assert (out / "_SUCCESS").exists() and not manifest.exists()
    with caplog.at_level("WARNING"):
        summary = run()
    assert summary.status == "complete" and summary.rows_embedded == 0  # proven again, nothing re-embedded
    assert "rebuilding it from" in caplog.text and json.loads(manifest.read_text())["complete"] is True

    record = sorted((out / "_shards").glob("*.json"))[0]
    record.write_text('{"path": "x", "rows": ')
    manifest.unlink()
    with pytest.raises(UsageError, match=rf"shard record .*{record.name} is damaged .*--overwrite"):
        run()
    top = sorted((out / "_lease").glob("*.json"))[-1]
    top.write_text("{")
    with pytest.raises(UsageError, match=rf"lease file .*{top.name} is damaged .*--overwrite"):
        run()
    assert run(overwrite=True).status == "complete"
    assert_exactly(out, ids)
    made = json.loads(manifest.read_text())
    assert made["complete"] is True and len(made["runs"]) == 1  # --overwrite starts the history over
    again = run()
    assert again.status == "noop" and "already complete" in again.line()

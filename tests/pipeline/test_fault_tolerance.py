"""Crashes, dead nodes, flaky object stores and messy corpora: every id once, nothing lost."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.config import JobConfig
from pipeline.errors import JobError
from pipeline.runner import run_job
from tests.faulty_proxy import FaultyProxy
from tests.local_jobs import output_ids, write_corpus

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}


def start_job(corpus: Path, out: Path, model: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            "--input",
            str(corpus),
            "--output",
            str(out),
            "--model",
            model,
            "--rows-per-block",
            "8",
            "--rows-per-file",
            "8",
            "--batch-size",
            "4",
            "--no-progress",
        ],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _job_processes(root: int) -> set[int]:
    """The driver, its descendants and everything in its session (from /proc)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rindex(")") + 2 :].split()
            stats[int(entry)] = (int(fields[1]), int(fields[3]))  # ppid, session id
    found = {pid for pid, (_, sid) in stats.items() if sid == root} | {root}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in stats.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return {pid for pid in found if pid in stats}


def kill_job(proc: subprocess.Popen) -> str:
    """SIGKILL the driver and every Ray process it started, until none is left."""
    for _ in range(50):
        victims = _job_processes(proc.pid) - {os.getpid()}
        if not victims or victims == {proc.pid} and proc.poll() is not None:
            break
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    return proc.communicate(timeout=60)[1]


@pytest.mark.e2e
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.soak), pytest.param(2, marks=pytest.mark.soak)])
def test_sigkill_anywhere_then_rerun_gives_every_id_once(tmp_path, minilm_path, seed):
    rng = random.Random(seed)
    ids = write_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    proc = start_job(tmp_path / "corpus", out, minilm_path)
    wanted = rng.randint(1, 12)  # kill once this many files exist, plus a random delay: mid-write
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and len(list(out.glob("part-*.parquet"))) < wanted:
        time.sleep(0.05)
    time.sleep(rng.uniform(0, 0.5))
    stderr = kill_job(proc)
    done_before = len(set(output_ids(out))) if list(out.glob("part-*.parquet")) else 0
    assert 0 < done_before < len(ids), f"the kill should land mid-run; job said: {stderr[-3000:]}"
    assert not (out / "_SUCCESS").exists()

    rerun = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            "--input",
            str(tmp_path / "corpus"),
            "--output",
            str(out),
            "--model",
            minilm_path,
            "--no-progress",
        ],
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    got = output_ids(out)
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))  # exactly once
    manifest = json.loads((out / "_manifest.json").read_text())
    last = manifest["runs"][-1]
    assert last["rows_skipped"] == done_before  # the rerun skipped what was durably written...
    assert last["rows_embedded"] == len(ids) - done_before  # ...and embedded only the rest
    assert manifest["rows_written"] == len(ids) and manifest["repaired_files"] == 0
    assert not list(out.glob("._tmp-*"))


@pytest.mark.integration
def test_messy_corpus_finishes_with_every_record_accounted_for(ray_cluster, tmp_path, minilm_path, caplog):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    good = [json.dumps({"id": f"g{i}", "text": f"fine text {i}"}).encode() for i in range(40)]
    bad = [
        b"{broken",
        json.dumps({"id": "nt"}).encode(),
        json.dumps({"id": "e", "text": " "}).encode(),
        b'{"id": "u", "text": "\xff"}',
    ]
    forged = "g\n2026-12-01 00:00:00,000 ERROR pipeline: forged line"  # an id that tries to forge a log line
    dup = [json.dumps({"id": forged, "text": t}).encode() for t in ("one text", "same id, other text")]
    (corpus / "mixed.jsonl").write_bytes(b"\n".join(good[:20] + bad + good[20:] + dup) + b"\n")
    (corpus / "empty.txt").write_text("")
    (corpus / "corrupt.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00garbage-not-gzip")
    (corpus / "notes.csv").write_text("not a shard")  # unknown format: skipped only because the run says so
    config = JobConfig(
        inputs=(str(corpus),),
        output=str(tmp_path / "out"),
        model=minilm_path,
        progress=False,
        max_bad_fraction=0.2,
        skip_corrupt_remainders=True,
        ignore_unknown_files=True,
    )
    with caplog.at_level("WARNING"):
        summary = run_job(config)
    assert summary.status == "complete"
    assert summary.rows_embedded == 42 and summary.rows_rejected == 4
    warned = [r.getMessage() for r in caplog.records if "more than once" in r.getMessage()]
    assert len(warned) == 1 and "g\\n2026-12-01" in warned[0] and "\n" not in warned[0]  # escaped: one line
    assert summary.duplicate_ids == 1 and "1 duplicate ids" in summary.line()  # both rows kept, reported
    rejects = pq.read_table(tmp_path / "out" / "_rejects").to_pylist()
    # ids from the record where it had one, else the derived '<shard>:<row>'
    assert {r["id"] for r in rejects} == {"mixed.jsonl:20", "nt", "e", "mixed.jsonl:23"}
    assert all(r["reason"] and r["source"] for r in rejects)
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["rows_rejected"] == 4 and manifest["reject_kinds"]["invalid JSON"] == 1
    # the corrupt shard's remainder is not a record: the run accepted it (--skip-corrupt-remainders) and says so
    assert [r["path"].rsplit("/", 1)[1] for r in manifest["corrupt_remainders"]] == ["corrupt.jsonl.gz"]
    assert manifest["duplicate_ids"] == 1 and manifest["duplicate_id_examples"] == [forged]
    assert manifest["ignored_files"] == 1 and manifest["ignored_file_examples"][0].endswith("notes.csv")


@pytest.mark.integration
def test_too_many_rejects_fail_without_success_marker(ray_cluster, tmp_path, minilm_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(20)) + "{bad\n")
    out = tmp_path / "out"
    with pytest.raises(JobError, match="max-bad-fraction"):
        run_job(JobConfig(inputs=(str(corpus),), output=str(out), model=minilm_path, progress=False))
    assert not (out / "_SUCCESS").exists()
    assert pq.read_table(out / "_rejects").num_rows == 1  # the rejects were still written
    assert len(output_ids(out)) == 20


@pytest.mark.integration
def test_transient_s3_errors_are_retried(ray_cluster, s3_server, s3fs_client, bucket, minilm_path):
    fs = s3fs_client
    ids = set()
    for s in range(2):
        lines = [json.dumps({"id": f"s{s}-{i}", "text": f"text {i}"}) for i in range(30)]
        ids.update(f"s{s}-{i}" for i in range(30))
        fs.pipe(f"{bucket}/in/{s}.jsonl", ("\n".join(lines) + "\n").encode())
    host, port = s3_server.host, s3_server.port
    with FaultyProxy(host, port, fail_every=4, reset_every=11) as proxy:
        config = JobConfig(
            inputs=(f"s3://{bucket}/in/",),
            output=f"s3://{bucket}/out/",
            model=minilm_path,
            progress=False,
            rows_per_file=16,
            storage_options={"endpoint_url": proxy.endpoint_url},
        )
        summary = run_job(config)
        assert proxy.injected > 5  # the faults really happened
    assert summary.status == "complete"
    fs.invalidate_cache()
    got = pads.dataset(f"{bucket}/out/", filesystem=fs, format="parquet").to_table(columns=["id"])["id"].to_pylist()
    assert sorted(got) == sorted(ids)


@pytest.mark.e2e
def test_worker_node_death_mid_run(tmp_path, minilm_path):
    ids = write_corpus(tmp_path / "corpus", shards=4, per_shard=60)
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "scripts" / "node_death.py"),
            str(tmp_path / "corpus"),
            str(out),
            minilm_path,
        ],
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == "complete", report
    assert report["files_before_kill"] >= 1 and report["killed_encode_actor_node"]
    got = output_ids(out)
    assert sorted(got) == sorted(ids) and len(got) == len(set(got))

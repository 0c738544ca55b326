"""The command as users run it: exit codes, one-line errors (in-process where a process adds nothing;
the demo and the secrets check run ``python -m pipeline`` as users do)."""

import json
import os
import subprocess
import sys

import pyarrow.dataset as pads
import pytest

from tests.clirun import run_cli

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}


def cli(*args, timeout=300, env=None):
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=timeout, env=env or ENV
    )


@pytest.mark.unit
def test_help_explains_every_flag():
    out = run_cli("run", "--help").stdout
    for flag in (
        "--input",
        "--output",
        "--model",
        "--revision",
        "--prefix",
        "--max-length",
        "--batch-size",
        "--dtype",
        "--output-dtype",
        "--text-field",
        "--id-field",
        "--title-field",
        "--storage-options",
        "--config",
        "--overwrite",
        "--max-bad-fraction",
    ):
        assert flag in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--output", "x"], "--input is required"),
        (["run", "--input", "/nonexistent/in", "--output", "/tmp/x", "--model", "/nonexistent/model"], "model"),
        (["run", "--input", "/nonexistent/in", "--output", "/tmp/x", "--prefix", "doc"], "invalid choice"),
        (["run", "--bogus"], "unrecognized arguments"),
        (["run", "--config", "/nonexistent.yaml"], "cannot read --config"),
    ],
)
@pytest.mark.unit
def test_usage_errors_exit_2_with_one_line(args, message):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


@pytest.mark.unit
def test_missing_input_is_exit_2(tmp_path, minilm_path):
    result = run_cli(
        "run", "--input", str(tmp_path / "nothing"), "--output", str(tmp_path / "o"), "--model", minilm_path
    )
    assert result.returncode == 2 and "input not found" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.unit
def test_debug_shows_the_traceback(tmp_path):
    result = run_cli(
        "run", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--model", str(tmp_path / "m"), "--debug"
    )
    assert result.returncode == 2 and "Traceback" in result.stderr


@pytest.mark.integration
def test_run_from_a_yaml_job_file(tmp_path, minilm_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "docs.jsonl").write_text(
        "".join(json.dumps({"key": f"k{i}", "body": f"text {i}"}) + "\n" for i in range(12))
    )
    job = tmp_path / "job.yaml"
    job.write_text(
        f"input: {corpus}\noutput: {tmp_path / 'out'}\nmodel: {minilm_path}\n"
        "text-field: body\nid_field: key\nprefix: query\nprogress: false\n"
    )
    result = run_cli("run", "--config", str(job), "--batch-size", "4")  # on the session's Ray
    assert result.returncode == 0, result.stderr[-3000:]
    assert "12 rows embedded, 0 rejected" in result.stdout
    table = pads.dataset(str(tmp_path / "out"), format="parquet").to_table()
    assert sorted(table["id"].to_pylist()) == sorted(f"k{i}" for i in range(12))
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["metadata"]["prefix"] == "query: " and manifest["runs"][0]["plan"]["batch_size"] == 4


@pytest.mark.e2e
def test_demo_runs_offline_end_to_end():
    result = cli("demo", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "600 rows embedded, 0 rejected" in result.stdout
    assert "query: 'how do I compress data with gzip?'" in result.stdout
    assert "  1. " in result.stdout
    # long documents: the chunked job finds what truncation cannot
    assert "embedded with --chunk-tokens 256" in result.stdout and "8 rows embedded, 0 rejected" in result.stdout
    assert "chunked (best window per document)" in result.stdout and "its best window is chunk" in result.stdout


@pytest.mark.integration
def test_missing_buckets_fail_fast_naming_the_resource(s3_server, s3fs_client, bucket, minilm_path):
    result = run_cli(
        "run", "--input", "s3://no-such-bucket-in/x/", "--output", f"s3://{bucket}/o/", "--model", minilm_path
    )
    assert result.returncode == 2 and "no-such-bucket-in" in result.stderr and "Traceback" not in result.stderr
    s3fs_client.pipe(f"{bucket}/in/a.txt", b"hello\n")
    result = run_cli(
        "run", "--input", f"s3://{bucket}/in/", "--output", "s3://no-such-bucket-out/o/", "--model", minilm_path
    )
    assert result.returncode == 2 and "cannot write to output s3://no-such-bucket-out/o/" in result.stderr


@pytest.mark.e2e
def test_secrets_never_reach_logs_outputs_or_metadata(s3_server, s3fs_client, bucket, minilm_path):
    secret = "sEcReT-value-that-must-not-leak-0123456789"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"HF_HUB_OFFLINE": "1", "RAY_ADDRESS": "", "AWS_DEFAULT_REGION": "us-east-1"})
    options = json.dumps({"key": "AKIAFAKEKEYID", "secret": secret, "endpoint_url": s3_server.endpoint_url})
    s3fs_client.pipe(f"{bucket}/in/a.jsonl", b'{"text": "hello"}\n{"text": 1}\n')
    result = cli(
        "run",
        "--input",
        f"s3://{bucket}/in/",
        "--output",
        f"s3://{bucket}/out/",
        "--model",
        minilm_path,
        "--storage-options",
        options,
        "--max-bad-fraction",
        "0.9",
        "--debug",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    s3fs_client.invalidate_cache()
    everything = result.stdout + result.stderr
    for path in s3fs_client.find(f"{bucket}/out/"):
        everything += s3fs_client.cat(path).decode("latin-1")
    assert "sEcReT" not in everything and "AKIAFAKEKEYID" not in everything
    # failing runs' messages are scrubbed too: an unreachable endpoint, and an error that echoes the value
    dead = json.dumps(
        {
            "key": "AKIAFAKEKEYID",
            "secret": secret,
            "endpoint_url": "http://127.0.0.1:9",
            "config_kwargs": {"retries": {"max_attempts": 1}},
        }
    )
    bad = cli(
        "run",
        "--input",
        f"s3://{bucket}/in/",
        "--output",
        f"s3://{bucket}/out2/",
        "--model",
        minilm_path,
        "--storage-options",
        dead,
        env=env,
    )
    # an endpoint that refuses connections is the network's moment, not the operator's: exit 1 (retried)
    assert bad.returncode == 1 and "temporary failure: cannot list input" in bad.stderr
    assert secret not in bad.stdout + bad.stderr
    echo = json.dumps({"secret": secret, "endpoint_url": s3_server.endpoint_url, "default_block_size": secret})
    bad = cli(
        "run",
        "--input",
        f"s3://{bucket}/in/",
        "--output",
        f"s3://{bucket}/out3/",
        "--model",
        minilm_path,
        "--storage-options",
        echo,
        env=env,
    )
    assert bad.returncode != 0 and secret not in bad.stdout + bad.stderr

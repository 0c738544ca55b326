"""Ray Jobs on a real `ray start --head` cluster with token authentication on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.dataset as pads
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def corpus(folder: Path, n: int = 24) -> set[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "text": f"ray job text {i}"}) + "\n" for i in range(n))
    )
    return {f"r{i}" for i in range(n)}


def wait_for(client, job_id: str, timeout: float = 600):
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        time.sleep(1)
    raise TimeoutError(job_id)


def test_jobs_api_with_token(ray_head, tmp_path, minilm_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    ids = corpus(tmp_path / "corpus")
    client = JobSubmissionClient(ray_head.dashboard_url, headers={"Authorization": f"Bearer {ray_head.token}"})
    job_id = client.submit_job(
        entrypoint=f"python -m pipeline run --input {tmp_path / 'corpus'} --output {tmp_path / 'out'} "
        f"--model {minilm_path} --no-progress",
        runtime_env={"working_dir": str(ROOT)},
    )
    status = wait_for(client, job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "24 rows embedded" in logs
    got = pads.dataset(str(tmp_path / "out"), format="parquet").to_table(columns=["id"])["id"].to_pylist()
    assert sorted(got) == sorted(ids)
    # the job's metrics reach the cluster's Prometheus endpoint (its run's series, summed over workers;
    # other jobs on this shared head have run ids of their own)
    run_id = json.loads((tmp_path / "out" / "_manifest.json").read_text())["runs"][-1]["run_id"]
    wanted = {
        ("ray_e5_embed_records_total", 'outcome="embedded"'): 24,
        ("ray_e5_embed_input_records_total", ""): 24,
        ("ray_e5_embed_stage_rows_total", 'stage="tokenize"'): 24,
        ("ray_e5_embed_stage_rows_total", 'stage="encode"'): 24,
    }
    deadline = time.monotonic() + 90
    while True:
        found = scrape(ray_head.metrics_url, wanted, run_id)
        if found == wanted or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert found == wanted
    assert "ray_e5_embed_tokens_total" in urllib.request.urlopen(ray_head.metrics_url, timeout=10).read().decode()


def scrape(url: str, wanted: dict, run_id: str) -> dict:
    """Sum each wanted (metric, tag) over the endpoint's series of one run."""
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    found = dict.fromkeys(wanted, 0)
    for line in body.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        for name, tag in wanted:
            if series.startswith(name + "{") and tag in series and f'run_id="{run_id}"' in series:
                found[(name, tag)] += int(float(value))
    return found


def test_cluster_rejects_clients_without_the_token(ray_head):
    from ray.job_submission import JobSubmissionClient

    with pytest.raises(Exception) as e:
        JobSubmissionClient(ray_head.dashboard_url, headers={"Authorization": "Bearer wrong-token"}).list_jobs()
    assert "401" in str(e.value) or "auth" in str(e.value).lower()


def test_ray_job_submit_cli_with_a_job_file(ray_head, tmp_path, minilm_path):
    ids = corpus(tmp_path / "corpus")
    env = {**os.environ, **ray_head.client_env()}
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("ray")),
            "job",
            "submit",
            "--working-dir",
            ".",
            "--",
            "python",
            "-m",
            "pipeline",
            "run",
            "--config",
            "jobs/local_cpu.yaml",
            "--input",
            str(tmp_path / "corpus"),
            "--output",
            str(tmp_path / "out"),
            "--model",
            minilm_path,
            "--no-progress",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "succeeded" in result.stdout.lower()
    got = pads.dataset(str(tmp_path / "out"), format="parquet").to_table(columns=["id"])["id"].to_pylist()
    assert sorted(got) == sorted(ids)

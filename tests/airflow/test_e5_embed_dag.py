"""The real e5_embed DAG in a real Airflow (its own virtualenv, as an Airflow deployment would
have), against a real token-auth Ray head; the token travels only in the Airflow connection."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_VERSION = "3.3.2"
REQUIREMENTS = ROOT / "jobs" / "airflow" / "requirements.txt"
CONSTRAINTS = ROOT / "jobs" / "airflow" / "constraints-test.txt"  # every package pinned: no resolving


def airflow_venv() -> Path:
    """Where the Airflow virtualenv lives: outside the clone, keyed by what it is built from (Airflow's
    version, the DAG's requirements and their pinned constraints, this Python), so a clean clone on a
    machine that built it once reuses it and any change of pin builds a new one.
    ``E5_EMBED_TEST_CACHE`` moves the cache."""
    key = hashlib.sha256(
        f"{AIRFLOW_VERSION}\n{sys.version_info[:2]}\n".encode() + REQUIREMENTS.read_bytes() + CONSTRAINTS.read_bytes()
    ).hexdigest()[:16]
    cache = Path(os.environ.get("E5_EMBED_TEST_CACHE") or Path.home() / ".cache" / "e5-embed-tests")
    return cache / f"airflow-{AIRFLOW_VERSION}-py{sys.version_info[0]}{sys.version_info[1]}-{key}"


@pytest.fixture(scope="session")
def airflow_python() -> str:
    from filelock import FileLock

    venv_dir = airflow_venv()
    python = venv_dir / "bin" / "python"
    marker = venv_dir / ".installed"
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(venv_dir) + ".lock"):  # two sessions on one machine build it once
        if not marker.exists():
            shutil.rmtree(venv_dir, ignore_errors=True)  # a half-built one from an interrupted session
            subprocess.run([sys.executable, "-m", "venv", str(venv_dir)], check=True)
            subprocess.run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    f"apache-airflow=={AIRFLOW_VERSION}",
                    "-r",
                    str(REQUIREMENTS),
                    "-c",
                    str(CONSTRAINTS),
                ],
                check=True,
                timeout=1500,
            )
            marker.touch()
    return str(python)


def test_dag_runs_the_job_fails_on_failure_and_retries_reattach(airflow_python, ray_head, tmp_path, minilm_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text(
        "".join(json.dumps({"id": f"a{i}", "text": f"airflow text {i}"}) + "\n" for i in range(16))
    )
    common = {"model": minilm_path, "prefix": "passage", "batch_size": 8}
    pwned = tmp_path / "pwned"
    # a trigger that tries to ship its own code: were its working_dir used, this `pipeline` would run
    smuggled = tmp_path / "smuggled" / "pipeline"
    smuggled.mkdir(parents=True)
    (smuggled / "__init__.py").write_text("")
    (smuggled / "__main__.py").write_text(f"open({str(pwned) + '-code'!r}, 'w').close()\n")
    conf = {
        # working_dir and runtime_env are not params of the DAG: the deployment's working dir runs
        "good": {
            **common,
            "input": str(corpus),
            "output": str(tmp_path / "out"),
            "verify_sample": 4,  # the optional verify task, after the run
            "working_dir": str(smuggled.parent),
            "runtime_env": {"working_dir": str(smuggled.parent)},
        },
        "bad": {**common, "input": str(tmp_path / "missing"), "output": str(tmp_path / "out-bad")},
        "injected": {
            **common,
            "input": str(corpus),
            "output": str(tmp_path / "out-inj"),
            "extra_args": f"--rows-per-file 1000; touch {pwned} #",
        },
    }
    home = tmp_path / "airflow-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AIRFLOW"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "jobs" / "airflow"),
            "AIRFLOW_CONN_RAY_DEFAULT": json.dumps(
                {"conn_type": "http", "host": "127.0.0.1", "port": ray_head.dashboard_port, "password": ray_head.token}
            ),
            "E5_EMBED_WORKING_DIR": str(ROOT),  # set by the deployment
            "E5_EMBED_POLL_INTERVAL": "1",
            "E5_EMBED_TASK_RETRIES": "0",
        }
    )
    airflow = str(Path(airflow_python).with_name("airflow"))
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    result = subprocess.run(
        [
            airflow_python,
            str(ROOT / "tests" / "scripts" / "airflow_dag_check.py"),
            str(ROOT / "jobs" / "airflow"),
            json.dumps(conf),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["good_state"] == "success", report
    assert report["verify_job"] == "SUCCEEDED", report  # e5-embed verify ran on the output, and held
    got = pads.dataset(str(tmp_path / "out"), format="parquet").to_table(columns=["id"])["id"].to_pylist()
    assert sorted(got) == sorted(f"a{i}" for i in range(16))
    assert report["bad_state"] == "failed"
    assert report["reattached_to"] and report["jobs_for_run"] == 1
    assert report["after_stop"].endswith("__try2")
    assert ray_head.token not in result.stdout  # the token stays in the connection
    assert report["injected_state"] == "failed" and not pwned.exists()  # no shell ran the text
    assert not Path(str(pwned) + "-code").exists()  # the trigger's working_dir shipped nothing
    assert report["operator_kill"] == "STOPPED" and report["trigger_kill"] == "STOPPED"

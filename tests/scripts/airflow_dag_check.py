"""Runs inside the Airflow virtualenv the tests create: the real e5_embed DAG via dag.test().

Usage: python airflow_dag_check.py DAG_FOLDER CONF_JSON
The Ray cluster is reached only through the connection in AIRFLOW_CONN_RAY_DEFAULT.
Prints one JSON line with the run's state and what the re-attach check saw.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time


def main(dag_folder: str, conf_json: str) -> None:
    sys.path.insert(0, dag_folder)
    import e5_embed_dag  # noqa: E402
    from ray_job import RayJobOperator, job_client, submission_id_for

    conf = json.loads(conf_json)
    result: dict = {}
    run = e5_embed_dag.dag.test(run_conf=conf["good"])
    result["good_state"] = str(getattr(run.state, "value", run.state))
    result["good_run_id"] = run.run_id
    # the optional verify task ran as its own Ray job on the run's output (verify_sample in the conf)
    from ray_job import job_client as _client

    verify_id = submission_id_for("e5_embed", f"{run.run_id}__verify")
    verify_jobs = {j.submission_id: str(j.status).split(".")[-1] for j in _client("ray_default")[0].list_jobs()}
    result["verify_job"] = verify_jobs.get(verify_id)

    bad = e5_embed_dag.dag.test(run_conf=conf["bad"])
    result["bad_state"] = str(getattr(bad.state, "value", bad.state))

    # Shell text in extra_args is refused before anything reaches Ray.
    injected = e5_embed_dag.dag.test(run_conf=conf["injected"])
    result["injected_state"] = str(getattr(injected.state, "value", injected.state))

    # A retried task while its job still runs: re-attach, don't submit a second job.
    client, _ = job_client("ray_default")
    base = submission_id_for("e5_embed", "manual__retry-check")
    client.submit_job(entrypoint="python -c 'import time; time.sleep(20)'", submission_id=base)
    op = RayJobOperator(task_id="probe", entrypoint="echo should-not-run")
    attached = op._attach_or_submit(client, base)
    jobs = [j.submission_id for j in client.list_jobs() if (j.submission_id or "").startswith(base)]
    result["reattached_to"] = attached == base
    result["jobs_for_run"] = len(jobs)
    client.stop_job(base)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and str(client.get_job_status(base)).split(".")[-1] != "STOPPED":
        time.sleep(0.5)
    # after that job was stopped, a retry submits the next try (which resumes the output)
    nxt = op._attach_or_submit(client, base)
    result["after_stop"] = nxt
    client.stop_job(nxt)

    # A killed task stops its Ray job: on the worker (operator) and while deferred (trigger).
    from ray_job import RayJobTrigger

    def wait_stopped(sid: str) -> str:
        deadline = time.monotonic() + 60
        status = ""
        while time.monotonic() < deadline:
            status = str(client.get_job_status(sid)).split(".")[-1]
            if status in ("STOPPED", "FAILED", "SUCCEEDED"):
                break
            time.sleep(0.5)
        return status

    killed = RayJobOperator(task_id="killed", entrypoint="python -c 'import time; time.sleep(120)'")
    killed.submission_id = killed._attach_or_submit(client, submission_id_for("e5_embed", "manual__kill-op"))
    killed.on_kill()
    result["operator_kill"] = wait_stopped(killed.submission_id)
    sid = submission_id_for("e5_embed", "manual__kill-trigger")
    client.submit_job(entrypoint="python -c 'import time; time.sleep(120)'", submission_id=sid)
    asyncio.run(RayJobTrigger(conn_id="ray_default", submission_id=sid).on_kill())
    result["trigger_kill"] = wait_stopped(sid)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

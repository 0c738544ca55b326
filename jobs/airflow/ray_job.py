"""Submit a Ray job from Airflow and wait for it without holding a worker slot.

A small operator + trigger on Ray's own ``JobSubmissionClient``:

- The cluster is an Airflow connection (default ``ray_default``; fixed by the DAG, not a
  template): host/port = the Ray dashboard address (schema ``http``/``https``), password = the
  cluster's auth token, sent as a Bearer header, and never over plain http to a non-loopback
  host unless the connection's extra allows it. Nothing else carries the token.
- The submission id is derived from the DAG run (``<dag_id>__<run_id>``), so a retried task
  re-attaches to the job it started if that job is still pending/running or already succeeded;
  after a failed/stopped job it submits ``…__try<N>``, which resumes the same output.
- Waiting is deferred to the triggerer (``RayJobTrigger``), which polls the job status; the job's
  log tail is written to the task log (scrubbed of the token and credentials), and a failed job
  fails the task.
- A killed task stops its Ray job: ``RayJobOperator.on_kill`` while the task runs on a worker,
  ``RayJobTrigger.on_kill`` (called by Airflow >= 3.3's triggerer for user kills) while deferred.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))  # e5_embed_args.py next to this file
from e5_embed_args import dashboard_address, scrub_log  # noqa: E402

try:  # Airflow 3
    from airflow.sdk import BaseHook, BaseOperator, Context
except ImportError:  # Airflow 2
    from airflow.hooks.base import BaseHook
    from airflow.models import BaseOperator
    from airflow.utils.context import Context
from airflow.exceptions import AirflowException
from airflow.triggers.base import BaseTrigger, TriggerEvent

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _connection(conn_id: str):
    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson if hasattr(conn, "extra_dejson") else {}
    address = dashboard_address(
        schema=conn.schema, host=conn.host, port=conn.port, has_token=bool(conn.password), extra=extra
    )
    return conn, address


def job_client(conn_id: str):
    """A JobSubmissionClient for the connection: dashboard address + token as a Bearer header."""
    from ray.job_submission import JobSubmissionClient

    conn, address = _connection(conn_id)
    headers = {"Authorization": f"Bearer {conn.password}"} if conn.password else {}
    return JobSubmissionClient(address, headers=headers), address


def stop_job(conn_id: str, submission_id: str, log) -> None:
    """Stop a Ray job that is not finished (a killed Airflow task must not leave it running)."""
    client, _ = job_client(conn_id)
    status = str(client.get_job_status(submission_id)).split(".")[-1]
    if status not in TERMINAL:
        log.info("stopping Ray job %s (%s) because its Airflow task was killed", submission_id, status)
        client.stop_job(submission_id)


def submission_id_for(dag_id: str, run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{dag_id}__{run_id}")[:180]


class RayJobTrigger(BaseTrigger):
    """Polls a Ray job until it reaches a terminal status (runs in the triggerer)."""

    def __init__(self, *, conn_id: str, submission_id: str, poll_interval: float = 30.0):
        super().__init__()
        self.conn_id = conn_id
        self.submission_id = submission_id
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"conn_id": self.conn_id, "submission_id": self.submission_id, "poll_interval": self.poll_interval},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        client, _ = await asyncio.to_thread(job_client, self.conn_id)
        while True:
            status = str(await asyncio.to_thread(client.get_job_status, self.submission_id)).split(".")[-1]
            if status in TERMINAL:
                yield TriggerEvent({"submission_id": self.submission_id, "status": status})
                return
            await asyncio.sleep(self.poll_interval)

    async def on_kill(self) -> None:
        """Airflow >= 3.3 calls this when a user kills the deferred task (not on triggerer restarts)."""
        await asyncio.to_thread(stop_job, self.conn_id, self.submission_id, self.log)


class RayJobOperator(BaseOperator):
    """Submit (or re-attach to) a Ray job for this DAG run, defer until it ends, fail if it failed."""

    # runtime_env is not a template field: no DAG-run param can reach what is shipped to the cluster
    template_fields: Sequence[str] = ("entrypoint",)

    def __init__(
        self,
        *,
        entrypoint: str,
        runtime_env: dict[str, Any] | None = None,
        conn_id: str = "ray_default",
        poll_interval: float = 30.0,
        log_tail_lines: int = 200,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.entrypoint = entrypoint
        self.runtime_env = runtime_env or {}
        self.conn_id = conn_id
        self.poll_interval = poll_interval
        self.log_tail_lines = log_tail_lines
        self.submission_id: str | None = None

    def execute(self, context: Context) -> str:
        client, address = job_client(self.conn_id)
        base = submission_id_for(context["dag"].dag_id, context["run_id"])
        if self.task_id != "embed":  # another task of the same run (verify): a job of its own
            base = submission_id_for(context["dag"].dag_id, f"{context['run_id']}__{self.task_id}")
        submission_id = self._attach_or_submit(client, base)
        self.submission_id = submission_id
        self.log.info("Ray job %s on %s (dashboard: %s/#/jobs/%s)", submission_id, address, address, submission_id)
        self.defer(
            trigger=RayJobTrigger(conn_id=self.conn_id, submission_id=submission_id, poll_interval=self.poll_interval),
            method_name="execute_complete",
        )
        return submission_id  # not reached: defer() raises

    def _attach_or_submit(self, client, base: str) -> str:
        """Re-attach to this run's live or finished-OK job; after a failure, submit the next try."""
        existing = {
            j.submission_id: j
            for j in client.list_jobs()
            if j.submission_id and (j.submission_id == base or j.submission_id.startswith(base + "__try"))
        }
        if existing:
            latest = max(existing, key=lambda sid: (len(sid), sid))
            status = str(existing[latest].status).split(".")[-1]
            if status not in ("FAILED", "STOPPED"):
                self.log.info("re-attaching to Ray job %s (%s)", latest, status)
                return latest
            submission_id = f"{base}__try{len(existing) + 1}"
            self.log.info(
                "previous Ray job %s ended %s; submitting %s (resumes the same output)", latest, status, submission_id
            )
        else:
            submission_id = base
        client.submit_job(entrypoint=self.entrypoint, submission_id=submission_id, runtime_env=self.runtime_env)
        return submission_id

    def on_kill(self) -> None:
        if self.submission_id:
            stop_job(self.conn_id, self.submission_id, self.log)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> str:
        client, _ = job_client(self.conn_id)
        conn, _ = _connection(self.conn_id)
        submission_id, status = event["submission_id"], event["status"]
        logs = client.get_job_logs(submission_id)
        tail = scrub_log("\n".join(logs.splitlines()[-self.log_tail_lines :]), [conn.password or ""])
        self.log.info("Ray job %s ended %s; last %d log lines:\n%s", submission_id, status, self.log_tail_lines, tail)
        if status != "SUCCEEDED":
            raise AirflowException(f"Ray job {submission_id} ended {status}")
        return submission_id

"""A real Ray head started with `ray start --head --block`, token authentication on.

The test holds the Popen handle and stops the head (and everything it started) with it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from e5tools.local_s3 import free_ports, wait_until_serving


class RayHead:
    def __init__(self, tmp: Path, num_cpus: int = 2):
        self.token = secrets.token_hex(24)
        # Its own ports and temp dir: the session's in-process Ray (ray_cluster) runs beside it, and
        # with default ports the second node's dashboard agent cannot bind 52365, so job submission
        # lands on the other cluster's agent (seen in CI as InvalidAuthToken / "No available agent").
        # Picked together so no two components get the same port (Ray refuses to start then).
        flags = (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
            "ray-client-server-port",
            "node-manager-port",
            "object-manager-port",
        )
        self.port, self.dashboard_port, *others = free_ports(2 + len(flags))
        self._ports = dict(zip(flags, others))
        self.num_cpus = num_cpus
        self.tmp = tmp
        # unix socket paths must stay short, so not under pytest's long tmp path
        self._temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")
        self._proc: subprocess.Popen | None = None

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def metrics_url(self) -> str:
        """The head node's Prometheus endpoint (``ray start --metrics-export-port``)."""
        return f"http://127.0.0.1:{self._ports['metrics-export-port']}/metrics"

    def client_env(self) -> dict[str, str]:
        """What a Ray Jobs client needs: the address and the token (nothing else)."""
        return {"RAY_ADDRESS": self.dashboard_url, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def start(self) -> RayHead:
        ray_bin = str(Path(sys.executable).with_name("ray"))
        env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "HF_HUB_OFFLINE": "1",
            # as an activated virtualenv: job entrypoints' `python` is this environment's
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        env.pop("RAY_ADDRESS", None)
        self._log = open(self.tmp / "ray-head.log", "w")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            [
                ray_bin,
                "start",
                "--head",
                "--block",
                f"--port={self.port}",
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={self.num_cpus}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                "--disable-usage-stats",
                f"--temp-dir={self._temp_dir}",
                *(f"--{flag}={port}" for flag, port in self._ports.items()),
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until_serving(
                self.dashboard_url + "/api/version",
                self._proc,
                120,
                what="ray start --head",
                headers={"Authorization": f"Bearer {self.token}"},
            )
            self._wait_for_job_agent()
        except Exception as e:  # whatever failed, the head started here is stopped here
            self.stop()
            raise RuntimeError(f"{e}: {(self.tmp / 'ray-head.log').read_text()[-2000:]}") from e
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_job_agent(self, timeout_s: float = 120) -> None:
        """The dashboard answers before the node's job agent does; submit a no-op until one is taken."""
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(self.dashboard_url, headers={"Authorization": f"Bearer {self.token}"})
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.submit_job(entrypoint="true", submission_id="ray-head-ready-check")
                return
            except RuntimeError as e:
                if "No available agent" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def stop(self) -> None:
        if self._proc is None:
            return
        # SIGTERM to `ray start --block` stops the processes it started; then the session group
        try:
            self._proc.send_signal(signal.SIGTERM)
            self._proc.wait(timeout=10)  # then the whole session group by SIGKILL: a test cluster keeps no state
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait()
        self._proc = None
        self._log.close()
        shutil.rmtree(self._temp_dir, ignore_errors=True)

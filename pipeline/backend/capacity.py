"""GPU capacity on autoscaling clusters: ask the autoscaler for GPUs and wait until they join.

A KubeRay or cluster-launcher cluster whose GPU group scales from zero has no GPU when the
job's driver starts; planning then would pick the CPU path. ``--min-gpus`` makes the job
wait (up to ``--gpu-wait-s``) for that many GPUs, after asking the autoscaler for them with
``ray.autoscaler.sdk.request_resources``; ``--max-gpus`` lets the encode pool grow as more join.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pipeline.errors import JobError

logger = logging.getLogger(__name__)


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


class GpuCapacity:
    """Wait for ``min_gpus`` GPUs; withdraw the autoscaler request when the job ends."""

    def __init__(
        self,
        *,
        min_gpus: int,
        timeout_s: float,
        poll_s: float = 5.0,
        gpus: Callable[[], int] = cluster_gpus,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.min_gpus = min_gpus
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._gpus, self._sleep, self._clock = gpus, sleep, clock
        self.requested = False

    def __enter__(self) -> GpuCapacity:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.requested:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[])  # Ray Data's own requests have replaced ours by now anyway
            self.requested = False

    def wait(self) -> int:
        """GPUs seen once there are at least ``min_gpus`` (0: no wait asked); JobError (exit 1) on timeout."""
        if self.min_gpus <= 0:
            return 0
        have = self._gpus()
        if have >= self.min_gpus:
            return have
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[{"GPU": 1}] * self.min_gpus)
        self.requested = True
        logger.info(
            "waiting up to %.0f s for %d GPU(s); the cluster has %d and the autoscaler was asked for more",
            self.timeout_s,
            self.min_gpus,
            have,
        )
        start = self._clock()
        last_log = start
        while have < self.min_gpus:
            now = self._clock()
            if now - start >= self.timeout_s:
                raise JobError(
                    f"the cluster has {have} GPU(s) after waiting {self.timeout_s:.0f} s for "
                    f"--min-gpus {self.min_gpus}; check the autoscaler's GPU node group and quotas"
                )
            if now - last_log >= 60:
                logger.info("still waiting: %d of %d GPU(s) after %.0f s", have, self.min_gpus, now - start)
                last_log = now
            self._sleep(self.poll_s)
            have = self._gpus()
        logger.info("%d GPU(s) joined after %.0f s", have, self._clock() - start)
        return have

"""A calibration run where the job's encoders run: on a GPU of the cluster (one Ray task holding
one GPU, the job's encode stage inside it), or, on a cluster without GPUs, in this process with the
CPU encode actor's threads (the CPU path: the same stages, so it is testable anywhere)."""

from __future__ import annotations

from typing import Any

from pipeline.planning.calibration import Calibration, measure


def calibrate_on_cluster(*, gpus: int, timeout_s: float, **kwargs: Any) -> Calibration:
    """``measure(**kwargs)`` on one of the cluster's GPUs (``gpus`` > 0), else here."""
    if gpus <= 0:
        return measure(**kwargs)
    import ray

    from pipeline.backend.dataset import gpu_process_env
    from pipeline.errors import TransientError
    from pipeline.stages.encode import EncodeStage

    env = gpu_process_env(EncodeStage.needs)  # the process the encode stage runs in, as in the job
    task = ray.remote(num_gpus=1, num_cpus=1, max_retries=0, runtime_env={"env_vars": env} if env else None)(measure)
    ref = task.remote(**kwargs)
    ready, _ = ray.wait([ref], timeout=timeout_s)
    if not ready:
        ray.cancel(ref, force=True)
        raise TransientError(
            f"the calibration did not start and finish on a GPU within {timeout_s:.0f} s (no GPU free, or "
            "the autoscaler did not add one); a retry may succeed"
        )
    return ray.get(ref)

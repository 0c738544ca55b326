"""The cluster as Ray sees it, described for the planner (which only does arithmetic over a
``ClusterSpec``): resources, live nodes, and a tiny GPU task per GPU node for the device's name and
memory. The only place the plan's inputs touch Ray (imported when called: ``plan --gpus N`` runs
without Ray installed)."""

from __future__ import annotations

import logging
from typing import Any

from pipeline.planning.plan import GB, ClusterSpec

logger = logging.getLogger(__name__)


def describe_cluster(*, probe_gpus: bool = True, max_gpus: int | None = None) -> ClusterSpec:
    """The connected cluster as the planner needs it: GPUs, CPUs, nodes, and (a tiny task per GPU
    node) the device name and memory, the smallest GPU's."""
    import ray

    resources = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    accel = next((k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")), None)
    gpus = int(resources.get("GPU", 0))
    probe = probe_gpu_nodes(nodes) if gpus and probe_gpus else {}
    return ClusterSpec(
        gpus=gpus,
        cpus=float(resources.get("CPU", 1)),
        nodes=max(1, len(nodes)),
        accelerator=probe.get("accelerator") or accel,
        gpu_memory_gb=probe.get("gpu_memory_gb"),
        max_gpus=max_gpus,
        probe=probe,
    )


def probe_gpu_nodes(nodes: list[dict], timeout_s: float = 60.0) -> dict[str, Any]:
    """One tiny GPU task per GPU node: device name and free/total memory (smallest wins)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_gpus=1, num_cpus=0)
    def read_gpu() -> dict[str, Any]:
        try:
            import torch

            if not torch.cuda.is_available():
                return {"cuda": False}
            free, total = torch.cuda.mem_get_info()
            return {"cuda": True, "name": torch.cuda.get_device_name(), "free_gb": free / GB, "total_gb": total / GB}
        except Exception as e:  # a probe must never fail the job; the table is the fallback
            return {"cuda": False, "error": f"{type(e).__name__}: {e}"}

    refs = [
        read_gpu.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
        for n in nodes
        if n.get("Resources", {}).get("GPU", 0) > 0
    ]
    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    for ref in pending:
        ray.cancel(ref, force=True)
    results = ray.get(ready)
    real = [r for r in results if r.get("cuda")]
    if not real:
        logger.warning(
            "GPU probe: no CUDA device visible to Ray GPU tasks (%d node(s) answered); "
            "using the scheduler profile's memory table",
            len(results),
        )
        return {"cuda": False, "nodes_probed": len(results)}
    smallest = min(real, key=lambda r: r["total_gb"])
    return {
        "cuda": True,
        "nodes_probed": len(results),
        "accelerator": smallest["name"],
        "gpu_memory_gb": round(smallest["total_gb"], 2),
        "min_free_gb": round(min(r["free_gb"] for r in real), 2),
    }

"""The resource plan: how many actors of each stage, their resources, and the batch size.

Computed on the driver before the pipeline starts, from the cluster's resources
and the model's shape. Explicit settings in the job config always win.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.config import JobConfig
from pipeline.encode_stage import EncodeResources
from pipeline.model import ModelInfo
from pipeline.tokenize_stage import TokenizeResources

logger = logging.getLogger(__name__)

CPU_BATCH_SIZE = 32
GPU_BATCH_SIZE = 256
SORT_WINDOW_BATCHES = 8  # encode sees this many micro-batches per Ray batch, sorted by length


@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    """What the plan is computed for: a live cluster's resources or a described one."""

    gpus: int = 0
    gpu_memory_gb: float | None = None
    cpus: float = 1.0
    nodes: int = 1
    accelerator: str | None = None

    @classmethod
    def from_ray(cls) -> "ClusterSpec":
        import ray

        resources = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        accel = next((k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")), None)
        return cls(gpus=int(resources.get("GPU", 0)), cpus=float(resources.get("CPU", 1)), nodes=max(1, len(nodes)),
                   accelerator=accel)


@dataclass(frozen=True, kw_only=True)
class ResourcePlan:
    device: str
    gpu_actors: int
    actors_per_gpu: int
    num_gpus_per_actor: float
    batch_size: int
    rows_per_encode_call: int
    encode_num_cpus: float
    torch_threads: int | None
    tokenizer_actors: int
    tokenizer_num_cpus: float
    io_num_cpus: float
    gpu_memory_gb: float | None
    estimated_peak_gpu_memory_gb: float | None

    def encode_resources(self) -> EncodeResources:
        return EncodeResources(num_gpus=self.num_gpus_per_actor, num_cpus=self.encode_num_cpus,
                               actors=self.gpu_actors, torch_threads=self.torch_threads)

    def tokenize_resources(self) -> TokenizeResources:
        return TokenizeResources(num_cpus=self.tokenizer_num_cpus, min_actors=1, max_actors=self.tokenizer_actors)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        where = f"{self.gpu_actors} GPU actor(s) x {self.num_gpus_per_actor:g} GPU" if self.device == "cuda" \
            else f"{self.gpu_actors} CPU encode actor(s) x {self.torch_threads} threads (no GPU in the cluster)"
        return f"plan: {where}, batch {self.batch_size}, {self.tokenizer_actors} tokenizer actor(s)"


def make_plan(cluster: ClusterSpec, model: ModelInfo, config: JobConfig) -> ResourcePlan:
    use_gpu = cluster.gpus > 0 and config.device != "cpu"
    if use_gpu:
        per_gpu = config.actors_per_gpu or 1
        actors = config.gpu_actors or cluster.gpus * per_gpu
        batch = config.batch_size or GPU_BATCH_SIZE
        tokenizers = config.tokenizer_actors or max(1, min(int(cluster.cpus) - actors, 2 * actors))
        return ResourcePlan(
            device="cuda", gpu_actors=actors, actors_per_gpu=per_gpu, num_gpus_per_actor=1.0 / per_gpu,
            batch_size=batch, rows_per_encode_call=batch * SORT_WINDOW_BATCHES, encode_num_cpus=1.0,
            torch_threads=None, tokenizer_actors=tokenizers, tokenizer_num_cpus=1.0, io_num_cpus=1.0,
            gpu_memory_gb=config.gpu_memory_gb or cluster.gpu_memory_gb, estimated_peak_gpu_memory_gb=None,
        )
    # No GPU: one encode actor per node using all that node's cores for torch; light
    # fractional CPU reservations for the rest so every stage can be scheduled.
    cpus_per_node = max(1, int(cluster.cpus // cluster.nodes))
    actors = config.gpu_actors or cluster.nodes
    batch = config.batch_size or CPU_BATCH_SIZE
    return ResourcePlan(
        device="cpu", gpu_actors=actors, actors_per_gpu=1, num_gpus_per_actor=0.0, batch_size=batch,
        rows_per_encode_call=batch * SORT_WINDOW_BATCHES,
        encode_num_cpus=float(max(1, math.floor(cpus_per_node / 2))), torch_threads=cpus_per_node,
        tokenizer_actors=config.tokenizer_actors or cluster.nodes, tokenizer_num_cpus=0.5, io_num_cpus=0.25,
        gpu_memory_gb=None, estimated_peak_gpu_memory_gb=None,
    )

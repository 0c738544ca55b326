"""What a stage declares, and the typed spec the plan makes of it for a backend to run.

A stage is a plain class over Arrow tables: ``Stage(**settings)(table) -> table``. It knows
nothing of Ray. The plan pairs it with typed settings, resources and a batch size in a
``StageSpec``; the backend adapter (``pipeline.backend.dataset``) is the only code that turns a
spec into a Ray Data ``map_batches`` call. Settings are checked against the stage's constructor
when the spec is made, so a renamed parameter fails at plan time on the driver, not when an
actor starts.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Needs:
    """What one actor of a stage needs, declared by the stage class (``needs = Needs(...)``); the
    plan sizes it to the cluster (``Resources.sized``)."""

    accelerator: bool = False  # a share of a GPU per actor where the cluster has GPUs
    threads_from_cpus: bool = False  # its native threads (a Rust pool) are the CPUs it reserves
    # variables the actor's process needs before its first CUDA call when it holds a GPU: set by the
    # backend as it starts that process (Ray's runtime_env), never by the stage in whatever process
    # constructs it; one the job's own environment sets already is left as it is
    gpu_process_env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, kw_only=True)
class Resources:
    """What each actor of a stage asks the cluster for, and how many actors the pool may have."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    min_actors: int = 1
    max_actors: int = 1

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0 or not 1 <= self.min_actors <= self.max_actors:
            raise ValueError(f"invalid stage resources: {self}")

    @classmethod
    def sized(cls, needs: Needs, *, num_cpus: float, gpu_share: float, actors: tuple[int, int]) -> "Resources":
        """A stage's declared needs at the plan's sizes: CPUs per actor, the GPU share (for a stage
        that needs an accelerator; 0 on a cluster without GPUs), the pool's least and most actors."""
        return cls(
            num_cpus=num_cpus,
            num_gpus=gpu_share if needs.accelerator else 0.0,
            min_actors=actors[0],
            max_actors=actors[1],
        )

    def threads(self, needs: Needs) -> int | None:
        """The native threads a stage that declares ``threads_from_cpus`` runs: its CPUs, at least one."""
        return max(1, math.ceil(self.num_cpus)) if needs.threads_from_cpus else None


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """One stage as the backend runs it."""

    stage: type  # the stage class: ``stage(**kwargs())`` once per actor, then called on each batch
    settings: Any  # a frozen dataclass whose fields are the stage's constructor arguments
    resources: Resources
    batch_size: int  # rows per call

    def __post_init__(self) -> None:
        try:
            inspect.signature(self.stage).bind(**self.kwargs())
        except TypeError as e:
            raise TypeError(f"{type(self.settings).__name__} does not fit {self.stage.__name__}: {e}") from e
        if self.batch_size < 1:
            raise ValueError(f"{self.stage.__name__}: batch_size must be >= 1, got {self.batch_size}")

    @property
    def name(self) -> str:
        return self.stage.__name__

    def kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self.settings, f.name) for f in fields(self.settings)}

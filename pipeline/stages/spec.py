"""What a stage declares, and the typed spec the plan makes of it for a backend to run.

A stage is a plain class over Arrow tables: ``Stage(**settings)(table) -> table``. It knows
nothing of Ray. It declares its ``role`` (what telemetry, progress and the timeline call it: a
class rename changes nothing there) and its ``needs``; its settings are its constructor's keyword
arguments, declared there once. The plan pairs it with those settings, resources and a batch size
in a ``StageSpec``; the backend adapter (``pipeline.backend.dataset``) is the only code that turns
a spec into a Ray Data ``map_batches`` call. Settings are checked against the stage's constructor
when the spec is made, so a renamed parameter fails at plan time on the driver, not when an
actor starts.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The roles a stage plays (``Stage.role``): telemetry's, progress's and the timeline's names for it.
TOKENIZE = "tokenize"  # records in, token ids out (truncated or cut into windows)
ENCODE = "encode"  # token ids in, embeddings out: the accelerator's stage
ROLES = (TOKENIZE, ENCODE)


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

    stage: type  # the stage class: ``stage(**settings)`` once per actor, then called on each batch
    settings: Mapping[str, Any]  # the stage's constructor arguments (checked against it here)
    resources: Resources
    batch_size: int  # rows per call

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", dict(self.settings))  # the spec's own copy
        if getattr(self.stage, "role", None) not in ROLES:
            raise TypeError(f"{self.stage.__name__}.role must be one of {', '.join(ROLES)}")
        try:
            inspect.signature(self.stage).bind(**self.settings)
        except TypeError as e:
            raise TypeError(f"the settings do not fit {self.stage.__name__}: {e}") from e
        if self.batch_size < 1:
            raise ValueError(f"{self.stage.__name__}: batch_size must be >= 1, got {self.batch_size}")

    @property
    def name(self) -> str:
        return self.stage.__name__

    @property
    def role(self) -> str:
        return self.stage.role

    def kwargs(self) -> dict[str, Any]:
        return dict(self.settings)

"""Per-accelerator scheduler profiles (``cluster/scheduler.yaml``), loaded and validated."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from pipeline.errors import UsageError

logger = logging.getLogger(__name__)

ENV_VAR = "E5_EMBED_SCHEDULER_CONFIG"
REPO_DEFAULT = Path(__file__).resolve().parents[1] / "cluster" / "scheduler.yaml"


@dataclass(frozen=True, kw_only=True)
class Profile:
    memory_gb: float | None = None
    actors_per_gpu: int = 1
    target_tokens_per_batch: int | None = None
    max_batch_size: int = 1024
    memory_headroom: float = 0.15
    cuda_context_gb: float = 0.6
    gpu_tokens_per_s: float = 500_000
    bf16: bool = True
    tokenizer_tokens_per_s_per_cpu: float = 150_000
    cpus_reserved_per_node: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.memory_headroom < 0.9:
            raise UsageError(f"scheduler config: memory_headroom must be in [0, 0.9), got {self.memory_headroom}")
        if self.actors_per_gpu < 1 or self.max_batch_size < 1:
            raise UsageError("scheduler config: actors_per_gpu and max_batch_size must be >= 1")

    @classmethod
    def build(cls, values: Mapping[str, Any], base: "Profile | None" = None, where: str = "") -> "Profile":
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise UsageError(f"scheduler config{where}: unknown key(s) {', '.join(unknown)}; "
                             f"valid keys: {', '.join(sorted(valid))}")
        return replace(base, **values) if base else cls(**values)


@dataclass(frozen=True)
class SchedulerConfig:
    defaults: Profile
    profiles: Mapping[str, Profile]
    source: str

    def profile_for(self, accelerator: str | None) -> tuple[str, Profile]:
        """The profile for an accelerator type (case-insensitive, 'NVIDIA A100-SXM4-80GB' style names too)."""
        if accelerator:
            wanted = accelerator.upper().replace("NVIDIA ", "").replace("TESLA ", "")
            by_upper = {k.upper(): k for k in self.profiles}
            if wanted in by_upper:
                return by_upper[wanted], self.profiles[by_upper[wanted]]
            for key in sorted(by_upper, key=len, reverse=True):  # longest name first: A100-80G before A100
                if wanted.startswith(key) or key in wanted.split("-")[0]:
                    return by_upper[key], self.profiles[by_upper[key]]
        return "default", self.defaults


def load_scheduler_config(path: str | None = None) -> SchedulerConfig:
    import yaml

    candidates = [path] if path else [os.environ.get(ENV_VAR), "cluster/scheduler.yaml", str(REPO_DEFAULT)]
    found = next((p for p in candidates if p and os.path.isfile(p)), None)
    if found is None:
        if path:
            raise UsageError(f"--scheduler-config {path} not found")
        logger.warning("no scheduler config found; using built-in defaults without accelerator profiles")
        return SchedulerConfig(Profile(), {}, "built-in defaults")
    try:
        with open(found, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"scheduler config {found} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(raw, dict) or not set(raw) <= {"defaults", "profiles"}:
        raise UsageError(f"scheduler config {found} must be a mapping with 'defaults' and 'profiles'")
    defaults = Profile.build(raw.get("defaults") or {}, where=" defaults")
    profiles = {str(name): Profile.build(values or {}, defaults, where=f" profile {name}")
                for name, values in (raw.get("profiles") or {}).items()}
    return SchedulerConfig(defaults, profiles, found)

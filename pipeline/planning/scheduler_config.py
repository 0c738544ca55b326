"""Per-accelerator scheduler profiles, loaded and validated.

The defaults ship inside the package (``pipeline/planning/scheduler.yaml``), so a
``pip install``ed job plans with them from any directory. A user file (``--scheduler-config``
or ``E5_EMBED_SCHEDULER_CONFIG``) is laid over them: its ``defaults`` keys replace the
packaged ones, and each of its profiles replaces or adds keys of the profile of that name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from pipeline.errors import UsageError

logger = logging.getLogger(__name__)

ENV_VAR = "E5_EMBED_SCHEDULER_CONFIG"
PACKAGED = "scheduler.yaml"  # package data of pipeline.planning
RENAMED = "tokenizer_tokens_per_s_per_cpu"  # read as 1e6 / tokenize_cpu_s_per_m_tokens


@dataclass(frozen=True, kw_only=True)
class Profile:
    memory_gb: float | None = None
    actors_per_gpu: int = 1
    target_tokens_per_batch: int | None = None
    max_batch_size: int = 1024
    memory_headroom: float = 0.15
    cuda_context_gb: float = 0.6
    gpu_tokens_per_s: float = 500_000
    # where gpu_tokens_per_s comes from, said beside every number the plan makes from it; unset: a guess
    rate_source: str | None = None
    bf16: bool = True
    # CPU-seconds per million tokens, measured by `e5-embed bench --cpu-side` (docs/benchmarks.md): the
    # tokenizer actors' own (sizes their pool), and the whole job's, every process (cores per GPU)
    tokenize_cpu_s_per_m_tokens: float = 2.5
    job_cpu_s_per_m_tokens: float = 4.5
    # the share of its cores the CPU side keeps busy (the marginal window of `bench --cpu-side`): cores
    # per GPU come from throughput per core (utilization / CPU-s per token), not from CPU-seconds alone
    cpu_utilization: float = 0.85
    cpus_reserved_per_node: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.memory_headroom < 0.9:
            raise UsageError(f"scheduler config: memory_headroom must be in [0, 0.9), got {self.memory_headroom}")
        if self.actors_per_gpu < 1 or self.max_batch_size < 1:
            raise UsageError("scheduler config: actors_per_gpu and max_batch_size must be >= 1")
        if not 0 < self.cpu_utilization <= 1:
            raise UsageError(f"scheduler config: cpu_utilization must be in (0, 1], got {self.cpu_utilization}")
        if not 0 < self.tokenize_cpu_s_per_m_tokens <= self.job_cpu_s_per_m_tokens:
            raise UsageError(
                "scheduler config: need 0 < tokenize_cpu_s_per_m_tokens <= job_cpu_s_per_m_tokens (the whole job "
                f"includes the tokenizers), got {self.tokenize_cpu_s_per_m_tokens} and {self.job_cpu_s_per_m_tokens}"
            )

    def cpu_tokens_per_core_s(self) -> float:
        """The CPU side's throughput per core in wall time: tokens per second one core feeds."""
        return self.cpu_utilization * 1e6 / self.job_cpu_s_per_m_tokens

    @classmethod
    def build(cls, values: Mapping[str, Any], base: "Profile | None" = None, where: str = "") -> "Profile":
        valid = {f.name for f in fields(cls)}
        if RENAMED in values:  # the per-role rate of earlier releases, as CPU-seconds per million tokens
            values = dict(values)
            rate = values.pop(RENAMED)
            if not (isinstance(rate, (int, float)) and rate > 0):
                raise UsageError(f"scheduler config{where}: {RENAMED} must be a positive number, got {rate!r}")
            logger.warning("scheduler config%s: %s is now tokenize_cpu_s_per_m_tokens (1e6 / it)", where, RENAMED)
            tokenize = values.setdefault("tokenize_cpu_s_per_m_tokens", round(1e6 / rate, 3))
            # the old rates were conservative (150k, the earlier default, is 6.7 CPU-s per million tokens):
            # the whole job is never cheaper than its tokenizers, so its figure rises to match
            job = values.get("job_cpu_s_per_m_tokens", (base or cls()).job_cpu_s_per_m_tokens)
            if isinstance(tokenize, (int, float)) and isinstance(job, (int, float)) and tokenize > job:
                values["job_cpu_s_per_m_tokens"] = tokenize
        unknown = sorted(set(values) - valid)
        if unknown:
            raise UsageError(
                f"scheduler config{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}"
            )
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


def _read(text: str, where: str) -> dict[str, Any]:
    import yaml

    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"scheduler config {where} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(raw, dict) or not set(raw) <= {"defaults", "profiles"}:
        raise UsageError(f"scheduler config {where} must be a mapping with 'defaults' and 'profiles'")
    return raw


def packaged_profiles() -> dict[str, Any]:
    from importlib import resources

    return _read(
        resources.files("pipeline.planning").joinpath(PACKAGED).read_text(encoding="utf-8"), f"(packaged {PACKAGED})"
    )


def load_scheduler_config(path: str | None = None) -> SchedulerConfig:
    """The packaged profiles, with the user's file (flag, else environment) laid over them."""
    raw = packaged_profiles()
    source = f"packaged {PACKAGED}"
    user = path or os.environ.get(ENV_VAR)
    if user:
        try:
            with open(user, encoding="utf-8") as f:
                override = _read(f.read(), user)
        except OSError as e:
            raise UsageError(f"--scheduler-config {user} not found ({e.strerror})") from e
        raw = {
            "defaults": {**(raw.get("defaults") or {}), **(override.get("defaults") or {})},
            "profiles": {
                **(raw.get("profiles") or {}),
                **{
                    name: {**((raw.get("profiles") or {}).get(name) or {}), **(values or {})}
                    for name, values in (override.get("profiles") or {}).items()
                },
            },
        }
        source = f"{user} over {source}"
    defaults = Profile.build(raw.get("defaults") or {}, where=" defaults")
    profiles = {
        str(name): Profile.build(values or {}, defaults, where=f" profile {name}")
        for name, values in (raw.get("profiles") or {}).items()
    }
    return SchedulerConfig(defaults, profiles, source)

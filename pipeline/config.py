"""The job's configuration: one validated, keyword-only, immutable dataclass.

Flags and YAML job files both end up here; YAML keys are the flag names
(``batch-size`` or ``batch_size``) and flags given on the command line win.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from pipeline.errors import UsageError
from pipeline.storage import register_secrets

PREFIXES = {"passage": "passage: ", "query": "query: ", "none": ""}
DTYPES = ("auto", "float32", "float16", "bfloat16")
OUTPUT_DTYPES = ("float32", "float16")
INPUT_FORMATS = ("auto", "text", "jsonl", "parquet")
DEVICES = ("auto", "cuda", "cpu")
DEFAULT_MODEL = "intfloat/e5-base-v2"


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    """Everything one ``e5-embed run`` needs. Validated at construction."""

    inputs: tuple[str, ...]
    output: str
    model: str = DEFAULT_MODEL
    revision: str | None = None
    prefix: str = "passage"
    max_length: int = 512
    batch_size: int | None = None
    dtype: str = "auto"
    output_dtype: str = "float32"
    device: str = "auto"
    compile: bool = False
    input_format: str = "auto"
    text_field: str = "text"
    id_field: str = "id"
    title_field: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    rows_per_block: int = 4096
    rows_per_file: int = 32768
    gpu_actors: int | None = None
    actors_per_gpu: int | None = None
    tokenizer_actors: int | None = None
    gpu_memory_gb: float | None = None
    min_gpus: int | None = None
    max_gpus: int | None = None
    gpu_wait_s: float = 900.0
    scheduler_config: str | None = None
    max_bad_fraction: float = 0.001
    skip_corrupt_remainders: bool = False
    max_record_bytes: int = 16 << 20
    lease_wait_s: float = 0.0
    lease_ttl_s: float = 120.0
    shared_local_path: bool = False
    overwrite: bool = False
    ray_address: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", os.fspath(self.model))
        object.__setattr__(self, "output", os.fspath(self.output))
        if isinstance(self.inputs, (str, bytes)):
            object.__setattr__(self, "inputs", (self.inputs,))
        object.__setattr__(self, "inputs", tuple(os.fspath(i) for i in self.inputs))
        if not self.inputs:
            raise UsageError("at least one --input is required")
        if not self.output:
            raise UsageError("--output is required")
        _choice("prefix", self.prefix, tuple(PREFIXES))
        _choice("dtype", self.dtype, DTYPES)
        _choice("output-dtype", self.output_dtype, OUTPUT_DTYPES)
        _choice("input-format", self.input_format, INPUT_FORMATS)
        _choice("device", self.device, DEVICES)
        _int_range("max-length", self.max_length, 8, 8192)
        if self.batch_size is not None:
            _int_range("batch-size", self.batch_size, 1, 1 << 16)
        _int_range("rows-per-block", self.rows_per_block, 1, 1 << 22)
        _int_range("rows-per-file", self.rows_per_file, 1, 1 << 24)
        for name in ("gpu_actors", "actors_per_gpu", "tokenizer_actors", "max_gpus"):
            value = getattr(self, name)
            if value is not None:
                _int_range(name.replace("_", "-"), value, 1, 1 << 16)
        if self.min_gpus is not None:
            _int_range("min-gpus", self.min_gpus, 0, 1 << 16)
        if self.max_gpus is not None and self.min_gpus is not None and self.min_gpus > self.max_gpus:
            raise UsageError(f"--min-gpus {self.min_gpus} is more than --max-gpus {self.max_gpus}")
        _seconds("gpu-wait-s", self.gpu_wait_s, allow_zero=False)
        if self.gpu_memory_gb is not None and not self.gpu_memory_gb > 0:
            raise UsageError(f"--gpu-memory-gb must be > 0, got {self.gpu_memory_gb}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise UsageError(f"--max-bad-fraction must be within [0, 1], got {self.max_bad_fraction}")
        for name in ("compile", "skip_corrupt_remainders", "shared_local_path", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"--{name.replace('_', '-')} must be true or false; got {getattr(self, name)!r}")
        _int_range("max-record-bytes", self.max_record_bytes, 1024, 1 << 31)
        _seconds("lease-wait-s", self.lease_wait_s, allow_zero=True)
        _seconds("lease-ttl-s", self.lease_ttl_s, allow_zero=False)
        if not isinstance(self.storage_options, Mapping):
            raise UsageError("--storage-options must be a JSON object")
        object.__setattr__(self, "storage_options", dict(self.storage_options))
        register_secrets(self.storage_options, (*self.inputs, self.output, self.model))
        for name in ("text_field", "id_field"):
            if not getattr(self, name):
                raise UsageError(f"--{name.replace('_', '-')} must not be empty")

    @property
    def gpus_to_wait_for(self) -> int:
        """--min-gpus; with only --max-gpus, 1: a job meant to grow onto GPUs must not plan for CPUs."""
        if self.min_gpus is not None:
            return self.min_gpus
        return 1 if self.max_gpus else 0

    @property
    def prefix_text(self) -> str:
        return PREFIXES[self.prefix]

    def replace(self, **changes: Any) -> "JobConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "JobConfig":
        """Build from YAML/flag values; keys may use dashes. Unknown keys are errors."""
        normalized: dict[str, Any] = {}
        valid = cls.field_names()
        aliases = {"input": "inputs"}
        for key, value in values.items():
            name = aliases.get(key.replace("-", "_"), key.replace("-", "_"))
            if name not in valid:
                shown = sorted(n.replace("_", "-") for n in valid if n != "inputs") + ["input"]
                raise UsageError(f"unknown option {key!r}; valid options: {', '.join(sorted(shown))}")
            normalized[name] = value
        if isinstance(normalized.get("storage_options"), str):
            normalized["storage_options"] = parse_storage_options(normalized["storage_options"])
        try:
            return cls(**normalized)
        except TypeError as e:
            raise UsageError(f"invalid job configuration: {e}") from e


def parse_storage_options(text: str) -> dict[str, Any]:
    """JSON text, or ``@path`` to read it from a file (keeps secrets out of process listings)."""
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise UsageError(f"cannot read --storage-options file {text[1:]}: {e.strerror}") from e
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--storage-options is not valid JSON: {e.msg} at position {e.pos}") from e
    if not isinstance(value, dict):
        raise UsageError("--storage-options must be a JSON object")
    return value


def _choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise UsageError(f"--{name} must be one of {', '.join(valid)}; got {value!r}")


def _seconds(name: str, value: Any, *, allow_zero: bool) -> None:
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 if allow_zero else value > 0)
    if bad or value != value or value == float("inf"):
        raise UsageError(f"--{name} must be a number of seconds {'>= 0' if allow_zero else '> 0'}; got {value!r}")


def _int_range(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"--{name} must be an integer in [{low}, {high}]; got {value!r}")

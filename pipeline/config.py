"""The job's configuration: one validated, keyword-only, immutable dataclass.

Flags, ``E5_EMBED_<FIELD>`` environment variables and YAML job files all end up here; YAML keys
are the flag names (``batch-size`` or ``batch_size``). Precedence: flag > environment > job file
> default. Each field's check is its flag's (``pipeline.flags``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from pipeline import flags
from pipeline.errors import UsageError
from pipeline.io.sources import INPUT_FORMATS  # noqa: F401
from pipeline.io.storage import register_secrets, safe_uri, uri_credentials
from pipeline.stages.e5 import DEFAULT_MODEL, DEVICES, DTYPES, OUTPUT_DTYPES, PREFIXES  # noqa: F401


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    """Everything one ``e5-embed run`` needs. Validated at construction."""

    inputs: tuple[str, ...]
    output: str
    model: str = DEFAULT_MODEL
    revision: str | None = None
    prefix: str = "passage"
    max_length: int = 512
    chunk_tokens: int | None = None
    chunk_overlap: int = 32
    max_chunks_per_record: int = 256
    batch_size: int | None = None
    dtype: str = "auto"
    output_dtype: str = "float32"
    device: str = "auto"
    compile: bool = False
    attention: str = "padded"  # padded or packed encoder micro-batches
    shape_buckets: tuple[int, ...] | None = None  # static padded widths for a compiled encoder
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
    ignore_unknown_files: bool = False
    max_record_bytes: int = 16 << 20
    lease_wait_s: float = 0.0
    lease_ttl_s: float = 120.0
    shared_local_path: bool = False
    overwrite: bool = False
    update: bool = False  # re-embed only what changed in the inputs (carry the rest over)
    reuse_from: tuple[str, ...] = ()  # other outputs whose vectors may be carried over
    ray_address: str | None = None
    progress: bool = True
    status_interval_s: float = 60.0

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
        if isinstance(self.reuse_from, (str, bytes)):
            object.__setattr__(self, "reuse_from", (self.reuse_from,))
        object.__setattr__(self, "reuse_from", tuple(os.fspath(u) for u in self.reuse_from or ()))
        if isinstance(self.shape_buckets, list):
            object.__setattr__(self, "shape_buckets", tuple(self.shape_buckets))
        flags.validate({f.name: getattr(self, f.name) for f in fields(self)})  # each flag's own check
        if self.shape_buckets and self.shape_buckets[-1] != self.max_length:
            raise UsageError(
                f"--shape-buckets must end at --max-length {self.max_length} (no longer shape is needed, and a "
                f"shorter one leaves long rows uncompiled); largest is {self.shape_buckets[-1]}"
            )
        if self.shape_buckets and self.attention == "packed":
            raise UsageError("--shape-buckets pads to fixed shapes; it does not combine with --attention packed")
        if self.max_gpus is not None and self.min_gpus is not None and self.min_gpus > self.max_gpus:
            raise UsageError(f"--min-gpus {self.min_gpus} is more than --max-gpus {self.max_gpus}")
        if self.chunk_tokens is not None:
            if self.chunk_tokens > self.max_length:
                raise UsageError(f"--chunk-tokens {self.chunk_tokens} is more than --max-length {self.max_length}")
            if self.chunk_overlap > self.chunk_tokens // 2:
                raise UsageError(
                    f"--chunk-overlap {self.chunk_overlap} is more than half of --chunk-tokens {self.chunk_tokens}"
                )
        if self.update and self.overwrite:
            raise UsageError("--update carries unchanged vectors over; --overwrite starts over: pass one of them")
        if not isinstance(self.storage_options, Mapping):
            raise UsageError("--storage-options must be a JSON object")
        object.__setattr__(self, "storage_options", dict(self.storage_options))
        named = [("--input", u) for u in self.inputs] + [("--reuse-from", u) for u in self.reuse_from]
        for flag, uri in named + [("--output", self.output), ("--model", self.model)]:
            kind = uri_credentials(uri)
            if kind:  # it would be written into the manifest, the data files' `source` and the logs
                raise UsageError(
                    f"{flag} {safe_uri(uri)} carries {kind}; credentials in a URI would be recorded in the "
                    f"output and its logs: pass them with --storage-options (or the store's environment)"
                )

    def register_secrets(self) -> None:
        """Tell the log and error scrubber this job's secrets (storage options at any depth, credentials
        inside URIs). The entry point that runs the job calls it (``run_job``); building a config has
        no side effect."""
        register_secrets(self.storage_options, (*self.inputs, *self.reuse_from, self.output, self.model))

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

"""The job's configuration: typed, immutable groups of settings by concern, composed by ``JobConfig``.

Flags, ``E5_EMBED_<FIELD>`` environment variables and YAML job files all end up here; YAML keys
are the flag names (``batch-size`` or ``batch_size``). Precedence: flag > environment > job file
> default. Each setting is declared once, as a field with its flag (``pipeline.settings.setting``);
``pipeline.flags`` generates the parsers, variables and docs from these fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import fields
from typing import Any

from pipeline.composed import ComposedSettings
from pipeline.errors import UsageError
from pipeline.io.layout import Layout
from pipeline.io.records import FieldSpec
from pipeline.io.storage import register_secrets, secrets_registered
from pipeline.options import (
    GROUPS,
    BudgetOptions,
    ChunkingOptions,
    ClusterOptions,
    EmbeddingOptions,
    EncodingOptions,
    IcebergOptions,
    LeaseOptions,
    PlanOptions,
    ReadingOptions,
    TelemetryOptions,
    WritingOptions,
)
from pipeline.output_settings import OutputSettings, TableSettings
from pipeline.stages.e5 import PREFIXES


class JobConfig(ComposedSettings):
    """Everything one ``e5-embed run`` needs, in typed groups by concern (``reading``, ``embedding``,
    ``chunking``, ``encoding``, ``writing``, ``cluster``, ``lease``, ``budget``, ``iceberg``,
    ``telemetry``); each consumer takes its group. Built from the user's flat namespace
    (``JobConfig(inputs=..., max_length=...)``: flags, variables and job-file keys are the groups'
    field names) and read flat too (``config.max_length`` is ``config.embedding.max_length``)."""

    GROUPS = GROUPS
    __slots__ = tuple(GROUPS)
    reading: ReadingOptions
    embedding: EmbeddingOptions
    chunking: ChunkingOptions
    encoding: EncodingOptions
    writing: WritingOptions
    cluster: ClusterOptions
    lease: LeaseOptions
    budget: BudgetOptions
    iceberg: IcebergOptions
    telemetry: TelemetryOptions

    def _check_across_groups(self) -> None:
        if not self.inputs:
            raise UsageError("at least one --input is required")
        if not self.output:
            raise UsageError("--output is required")
        super()._check_across_groups()
        if self.iceberg.iceberg_table is not None and self.writing.output_dtype == "float16":
            raise UsageError(
                "--output-dtype float16 cannot be published: Iceberg has no 16-bit float type; publish "
                "float32 vectors, or leave --iceberg-table out"
            )

    def register_secrets(self) -> None:
        """Tell the log and error scrubber this job's secrets (storage options at any depth, credentials
        inside URIs) for the rest of the process: the command line calls it, so its last message is
        scrubbed too. Building a config has no side effect."""
        register_secrets(self.storage_options, self._secret_places())

    def secrets_registered(self) -> AbstractContextManager[None]:
        """The same for one block: ``run_job`` holds them while it runs (a long-lived process keeps no
        finished job's secrets)."""
        return secrets_registered(self.storage_options, self._secret_places())

    def _secret_places(self) -> tuple[str, ...]:
        return (*self.inputs, *self.reuse_from, self.output, self.model)

    @property
    def gpus_to_wait_for(self) -> int:
        """--min-gpus; with only --max-gpus, 1: a job meant to grow onto GPUs must not plan for CPUs."""
        if self.min_gpus is not None:
            return self.min_gpus
        return 1 if self.max_gpus else 0

    @property
    def prefix_text(self) -> str:
        return PREFIXES[self.prefix]

    @property
    def layout(self) -> Layout:
        """One row per record (truncated) or per window (--chunk-tokens), chosen here once."""
        return Layout.of_chunking(self.chunk_tokens)

    def output_settings(self) -> "OutputSettings":
        """The ledger's group: what the output's files are made with, and how an existing output is treated."""
        return OutputSettings(
            output=self.output,
            inputs=tuple(self.inputs),
            model=self.model,
            revision=self.revision,
            prefix_text=self.prefix_text,
            max_length=self.max_length,
            dtype=self.dtype,
            output_dtype=self.output_dtype,
            text_field=self.text_field,
            id_field=self.id_field,
            title_field=self.title_field,
            input_format=self.input_format,
            chunking=self.chunking.settings(),
            overwrite=self.overwrite,
            update=self.update,
            reuse_from=tuple(self.reuse_from),
            skip_corrupt_remainders=self.skip_corrupt_remainders,
            max_bad_fraction=self.max_bad_fraction,
        )

    def table_settings(self) -> "TableSettings | None":
        """The publisher's group (``pipeline.ledger.table``); None when no table is asked for."""
        if self.iceberg_table is None:
            return None
        return TableSettings(
            table=self.iceberg_table,
            catalog=self.iceberg_catalog,
            keep_snapshots=self.iceberg_keep_snapshots,
            rebuild=self.iceberg_rebuild,
            storage_options=dict(self.storage_options),
        )

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


def field_spec(values: Any, *, prefix: str = "") -> FieldSpec:
    """How records are found in the input (the run's ``JobConfig`` or plan's ``PlanConfig``: the
    same declarations), made in one place for both commands."""
    return FieldSpec(
        text_field=values.text_field,
        id_field=values.id_field,
        title_field=values.title_field,
        title_apart=Layout.of_chunking(values.chunk_tokens).title_apart,  # every window gets the title
        prefix=prefix,
    )


# plan's groups: every group that declares a setting `plan` takes, and PlanOptions (plan only)
PLAN_GROUPS: dict[str, type] = {
    **{a: g for a, g in GROUPS.items() if any("plan" in f.metadata["flag"].commands for f in fields(g))},
    "options": PlanOptions,
}


class PlanConfig(ComposedSettings):
    """The ``plan`` command's settings: the same typed groups as ``JobConfig`` (the settings ``plan``
    takes set from its flags, the others at their defaults; no input or output required) and
    ``PlanOptions`` (a cluster to describe, the estimate's sample and price)."""

    GROUPS = PLAN_GROUPS
    __slots__ = tuple(PLAN_GROUPS)
    reading: ReadingOptions
    embedding: EmbeddingOptions
    chunking: ChunkingOptions
    encoding: EncodingOptions
    writing: WritingOptions
    cluster: ClusterOptions
    budget: BudgetOptions
    options: PlanOptions


def plan_config_from_args(args: Any) -> PlanConfig:
    """``plan``'s typed settings from its parsed flags, each setting's check applied."""
    taken = [f.name for g in PLAN_GROUPS.values() for f in fields(g) if "plan" in f.metadata["flag"].commands]
    values = {name: getattr(args, name) for name in taken}
    if isinstance(values["storage_options"], str):
        values["storage_options"] = parse_storage_options(values["storage_options"])
    values["storage_options"] = values["storage_options"] or {}
    values["inputs"] = tuple(values["inputs"] or ())
    return PlanConfig(**values)


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

"""The settings, declared once each, in typed frozen groups by concern (``ReadingOptions`` …
``TelemetryOptions``, and ``PlanOptions`` for ``plan`` only): each field with its flag, help, type
and check (``pipeline.settings.setting``); each group checks its own fields at construction.
``pipeline.flags`` derives the parsers, variables and docs from these fields; ``pipeline.config``
composes them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from pipeline import settings
from pipeline.errors import UsageError
from pipeline.io.formats import INPUT_FORMATS
from pipeline.settings import (
    BOTH,
    PLAN,
    ascending_buckets,
    boolean,
    fraction,
    int_range,
    not_empty,
    one_of,
    positive_number,
    seconds,
    setting,
    token_buckets,
)
from pipeline.stages.chunking import ChunkSettings
from pipeline.stages.e5 import ATTENTION_MODES, DEFAULT_MODEL, DEVICES, DTYPES, OUTPUT_DTYPES, PREFIXES


@dataclass(frozen=True, kw_only=True)
class ReadingOptions:
    """What to read and how records are found in it: the inputs, their format and fields, the store's
    options, what is skipped or refused."""

    inputs: tuple[str, ...] = setting(
        default_factory=tuple,  # required by `run` (JobConfig), optional for `plan`
        help="input folder/prefix or file (s3://, gs://, file paths, ...), literal; repeatable",
        metavar="URI",
        repeat=True,
        commands=BOTH,
        name="input",
    )
    input_format: str = setting(
        "auto",
        help="override format detection by extension (.txt, .jsonl/.ndjson/.json, .parquet; .gz/.zst)",
        choices=INPUT_FORMATS,
        check=one_of(INPUT_FORMATS),
        commands=BOTH,
    )
    text_field: str = setting("text", help="field holding the text", check=not_empty, commands=BOTH)
    id_field: str = setting(
        "id", help="field holding the id; missing ids become '<shard path>:<row>'", check=not_empty, commands=BOTH
    )
    title_field: str | None = setting(None, help="optional title field, embedded as f'{title} {text}'", commands=BOTH)
    storage_options: Mapping[str, Any] = setting(
        default_factory=dict,
        help="fsspec storage options as JSON, or @FILE holding it (keeps secrets out of process "
        "listings); S3 already uses the AWS chain and AWS_ENDPOINT_URL",
        metavar="JSON",
        commands=BOTH,
    )
    max_record_bytes: int = setting(
        16 << 20,
        help="reject a record (line) longer than this without reading it whole",
        type=int,
        check=int_range(1024, 1 << 31),
    )
    skip_corrupt_remainders: bool = setting(
        False,
        help="complete the job even when a compressed shard breaks off part-way (what "
        "decodes is embedded; the shards are listed in the manifest). Default: such a shard fails the job",
        type=None,
        check=boolean,
    )
    ignore_unknown_files: bool = setting(
        False,
        help="skip files of unknown format inside input folders (they are listed in the manifest). "
        "Default: such files fail the run (exit 2), named",
        type=None,
        check=boolean,
        commands=BOTH,
    )
    shared_local_path: bool = setting(
        False,
        help="local paths are on storage every node shares (NFS, ...); without it a multi-node "
        "cluster refuses local --input/--output",
        type=None,
        check=boolean,
    )

    def __post_init__(self) -> None:
        inputs = self.inputs
        if isinstance(inputs, (str, bytes, os.PathLike)):
            inputs = (inputs,)
        object.__setattr__(self, "inputs", tuple(os.fspath(i) for i in inputs))
        if not isinstance(self.storage_options, Mapping):
            raise UsageError("--storage-options must be a JSON object")
        object.__setattr__(self, "storage_options", dict(self.storage_options))
        _check_fields(self)


@dataclass(frozen=True, kw_only=True)
class EmbeddingOptions:
    """What the vectors are: the model (pinned by content), E5's prefix and the token budget."""

    model: str = setting(
        DEFAULT_MODEL,
        help="Hub id, local folder, or a folder in object storage (s3://…/, copied once per node)",
        commands=BOTH,
    )
    revision: str | None = setting(
        None,
        help="Hub revision (branch/tag/commit); the driver resolves it to a commit sha that all actors load",
        commands=BOTH,
    )
    prefix: str = setting(
        "passage",
        help="E5 input prefix: 'passage: ', 'query: ' or none",
        choices=tuple(PREFIXES),
        check=one_of(tuple(PREFIXES)),
        commands=BOTH,
    )
    max_length: int = setting(
        512, help="truncate inputs at this many tokens", type=int, check=int_range(8, 8192), commands=BOTH
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", os.fspath(self.model))
        _check_fields(self)


@dataclass(frozen=True, kw_only=True)
class ChunkingOptions:
    """Long documents: windows instead of truncation (``--chunk-tokens``)."""

    chunk_tokens: int | None = setting(
        None,
        help="long documents: embed every window of at most this many tokens (prefix, title and special "
        "tokens included; <= --max-length), one output row per window, instead of truncating",
        type=int,
        check=int_range(16, 8192),
        commands=BOTH,
    )
    chunk_overlap: int = setting(
        32,
        help="with --chunk-tokens: tokens repeated between neighbouring windows (at most half a window)",
        type=int,
        check=int_range(0, 4096),
        commands=BOTH,
    )
    max_chunks_per_record: int = setting(
        256,
        help="with --chunk-tokens: windows past this many are cut off (the record's rows say truncated)",
        type=int,
        check=int_range(1, 1 << 20),
        commands=BOTH,
    )

    def __post_init__(self) -> None:
        _check_fields(self)

    def settings(self) -> ChunkSettings | None:
        """The stages' and the ledger's windows, or None: records are truncated."""
        if self.chunk_tokens is None:
            return None
        return ChunkSettings(
            tokens=self.chunk_tokens, overlap=self.chunk_overlap, max_chunks=self.max_chunks_per_record
        )


@dataclass(frozen=True, kw_only=True)
class EncodingOptions:
    """How the encoder runs and is sized: batch, dtype, device, attention, compile, the pools (the planner's inputs)."""

    batch_size: int | None = setting(
        None,
        help="fixed rows per forward pass (default: from the resource plan, which also checks that it fits)",
        type=int,
        check=int_range(1, 1 << 20),
        commands=BOTH,
    )
    dtype: str = setting(
        "auto",
        help="compute dtype; auto = bf16 (fp16 on GPUs without bf16) on GPU, float32 on CPU",
        choices=DTYPES,
        check=one_of(DTYPES),
        commands=BOTH,
    )
    device: str = setting(
        "auto",
        help="where to encode (auto: GPU if the cluster has one)",
        choices=DEVICES,
        check=one_of(DEVICES),
        commands=BOTH,
    )
    compile: bool = setting(
        False,
        help="torch.compile the encoder (opt-in: a warm-up per actor; measure with `e5-embed bench`)",
        type=None,
        check=boolean,
    )
    attention: str = setting(
        "auto",
        help="encoder micro-batches: auto (packed where its fast kernel runs: CUDA, compute capability 8.0+, "
        "bf16/fp16, torch's varlen attention; padded elsewhere), padded (SDPA over a padding mask) or packed (rows "
        "end to end, variable-length attention; same embeddings within the parity tolerance)",
        choices=ATTENTION_MODES,
        check=one_of(ATTENTION_MODES),
        commands=BOTH,
    )
    shape_buckets: tuple[int, ...] | None = setting(
        None,
        help="compile the encoder for these padded widths only (e.g. 128,256,512; rows padded to --batch-size), "
        "warmed at actor start, CUDA graphs per shape on GPU: a fast-path candidate, measure with `e5-embed bench`",
        type=token_buckets,
        check=ascending_buckets,
        commands=BOTH,
    )
    rows_per_block: int = setting(4096, help="rows per block read from a shard", type=int, check=int_range(1, 1 << 22))
    gpu_actors: int | None = setting(
        None, help="encode actors (default: from the plan)", type=int, check=int_range(1, 1 << 16), commands=BOTH
    )
    actors_per_gpu: int | None = setting(
        None, help="encode actors sharing one GPU (default: plan)", type=int, check=int_range(1, 1 << 16), commands=BOTH
    )
    tokenizer_actors: int | None = setting(
        None, help="max tokenizer actors (default: plan)", type=int, check=int_range(1, 1 << 16), commands=BOTH
    )
    encode_threads: int | None = setting(
        None,
        help="torch threads per encode actor (default: plan: 1 beside a GPU, every core of the node on CPU)",
        type=int,
        check=int_range(1, 1 << 10),
        commands=BOTH,
    )
    gpu_memory_gb: float | None = setting(
        None, help="VRAM per GPU, overriding the probe and profile", type=float, check=positive_number, commands=BOTH
    )
    scheduler_config: str | None = setting(
        None,
        help="per-accelerator scheduler profiles laid over the packaged ones (pipeline/planning/scheduler.yaml)",
        metavar="YAML",
        commands=BOTH,
    )

    def __post_init__(self) -> None:
        if isinstance(self.shape_buckets, list):
            object.__setattr__(self, "shape_buckets", tuple(self.shape_buckets))
        _check_fields(self)
        if self.shape_buckets and self.attention == "packed":
            raise UsageError("--shape-buckets pads to fixed shapes; it does not combine with --attention packed")


@dataclass(frozen=True, kw_only=True)
class WritingOptions:
    """Where the output goes and how an existing one is treated: its files, --overwrite, --update,
    --reuse-from, the rejects allowed."""

    output: str | None = setting(
        None,  # required by `run` (JobConfig), optional for `plan`
        help="output folder/prefix for Parquet files (literal); with `plan --update`: the output to update",
        metavar="URI",
        commands=BOTH,
    )
    output_dtype: str = setting(
        "float32",
        help="stored embedding dtype (float16 halves storage)",
        choices=OUTPUT_DTYPES,
        check=one_of(OUTPUT_DTYPES),
    )
    rows_per_file: int = setting(
        32768,
        help="most rows per output file; also the unit of work redone after a crash",
        type=int,
        check=int_range(1, 1 << 24),
    )
    overwrite: bool = setting(
        False,
        help="start over: remove _SUCCESS, then delete the files this tool wrote in --output",
        type=None,
        check=boolean,
    )
    update: bool = setting(
        False,
        help="bring an output whose input shards changed, vanished or were added up to date, encoding only "
        "records whose text is new or changed (unchanged vectors are carried over by text_hash; rows of "
        "edited, deleted and vanished records are removed). Without it a changed shard is refused",
        type=None,
        check=boolean,
        commands=BOTH,
    )
    reuse_from: tuple[str, ...] = setting(
        (),
        help="take vectors from another output made with the same model and settings, matched by text_hash "
        "(a new snapshot, a re-sharded corpus); repeatable",
        metavar="URI",
        repeat=True,
    )
    max_bad_fraction: float = setting(
        0.001,
        help="fail (exit 1, no _SUCCESS) when more than this fraction of records is rejected",
        type=float,
        check=fraction,
    )

    def __post_init__(self) -> None:
        if self.output is not None:
            object.__setattr__(self, "output", os.fspath(self.output))
        reuse = self.reuse_from
        if isinstance(reuse, (str, bytes, os.PathLike)):
            reuse = (reuse,)
        object.__setattr__(self, "reuse_from", tuple(os.fspath(u) for u in reuse or ()))
        _check_fields(self)
        if self.update and self.overwrite:
            raise UsageError("--update carries unchanged vectors over; --overwrite starts over: pass one of them")


@dataclass(frozen=True, kw_only=True)
class ClusterOptions:
    """The Ray cluster: its address and the GPUs to wait for or grow onto."""

    ray_address: str | None = setting(
        None, help="Ray cluster address (default: RAY_ADDRESS, else start a local one)", commands=BOTH
    )
    min_gpus: int | None = setting(
        None,
        help="autoscaling clusters: ask for and wait until this many GPUs have joined (see --gpu-wait-s)",
        type=int,
        check=int_range(0, 1 << 16),
    )
    max_gpus: int | None = setting(
        None,
        help="the most GPUs the encode pool uses: room to grow on autoscaling clusters, a cap on bigger "
        "ones (implies --min-gpus 1)",
        type=int,
        check=int_range(1, 1 << 16),
        commands=BOTH,
    )
    gpu_wait_s: float = setting(
        900.0,
        help="how long --min-gpus waits before the job fails with exit 1",
        type=float,
        check=seconds(allow_zero=False),
    )

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.max_gpus is not None and self.min_gpus is not None and self.min_gpus > self.max_gpus:
            raise UsageError(f"--min-gpus {self.min_gpus} is more than --max-gpus {self.max_gpus}")


@dataclass(frozen=True, kw_only=True)
class LeaseOptions:
    """The output's lease: how long to wait for another run, how long a lease lives without renewal."""

    lease_wait_s: float = setting(
        0.0,
        help="when another run holds the output, wait this long for it before exit 1",
        type=float,
        check=seconds(allow_zero=True),
    )
    lease_ttl_s: float = setting(
        120.0,
        help="the output lease expires this long after its last renewal, so a retry after a crash proceeds",
        type=float,
        check=seconds(allow_zero=False),
    )

    def __post_init__(self) -> None:
        _check_fields(self)


@dataclass(frozen=True, kw_only=True)
class BudgetOptions:
    """A run that keeps to a budget: the cap, the price, the margin and the warm-up."""

    max_gpu_hours: float | None = setting(
        None,
        help="keep the run to this many GPU-hours (encoder-hours on a cluster without GPUs): after warm-up it "
        "projects its total from the measured rate and the records left, and past the cap (less "
        "--budget-margin) stops at a consistent point (whole files, lease released), exit 1; a rerun resumes",
        type=float,
        check=positive_number,
    )
    max_cost: float | None = setting(
        None,
        help="keep the run to this cost at --gpu-hour-price (as --max-gpu-hours)",
        type=float,
        check=positive_number,
    )
    gpu_hour_price: float | None = setting(
        None,
        help="price of one GPU-hour: the plan's cost estimate, and --max-cost",
        type=float,
        check=positive_number,
        commands=BOTH,
    )
    budget_margin: float = setting(
        0.1,
        help="stop when the projection passes the cap less this share (the margin for the in-flight work)",
        type=float,
        check=fraction,
    )
    budget_warmup_s: float = setting(
        30.0,
        help="seconds of encoding before the budget trusts its projection (at most a quarter of the cap's time)",
        type=float,
        check=seconds(allow_zero=True),
    )

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.max_cost is not None and self.gpu_hour_price is None:
            raise UsageError("--max-cost needs --gpu-hour-price (the price of one GPU-hour)")


@dataclass(frozen=True, kw_only=True)
class IcebergOptions:
    """Publishing the output as an Iceberg table."""

    iceberg_table: str | None = setting(
        None,
        help="publish each run, once proven complete, to this Apache Iceberg table (NAMESPACE.TABLE) as one "
        "snapshot: the data files registered in place (no copy); --update replaces stale files in the same snapshot",
        metavar="NAMESPACE.TABLE",
    )
    iceberg_catalog: str | None = setting(
        None,
        help="the pyiceberg catalog to publish through, by name (its settings from .pyiceberg.yaml or "
        "PYICEBERG_CATALOG__<NAME>__* variables: SQL on PostgreSQL, REST, Glue, ...); default: an embedded "
        "SQLite catalog kept in <output>/_iceberg/ (no server)",
        metavar="NAME",
    )
    iceberg_keep_snapshots: int = setting(
        10,
        help="table snapshots kept after each publish; older ones expire, and data files only they read are "
        "deleted then (until then --update and --overwrite leave them in place)",
        type=int,
        check=int_range(1, 100000),
    )
    iceberg_rebuild: bool = setting(
        False,
        help="register the table again from the output when its catalog or metadata cannot be read (a damaged "
        "catalog.db, a deleted metadata folder); its snapshot history starts over. A readable table is left as it is",
        type=None,
        check=boolean,
    )

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.iceberg_rebuild and self.iceberg_table is None:
            raise UsageError("--iceberg-rebuild rebuilds the table of --iceberg-table; pass the table too")
        if self.iceberg_table is not None:
            parts = self.iceberg_table.split(".")
            if len(parts) < 2 or not all(p and p.replace("_", "").replace("-", "").isalnum() for p in parts):
                raise UsageError(
                    f"--iceberg-table {self.iceberg_table!r} must be NAMESPACE.TABLE (letters, digits, _ and -)"
                )
        elif self.iceberg_catalog is not None:
            raise UsageError("--iceberg-catalog names the catalog of --iceberg-table; pass the table too")


@dataclass(frozen=True, kw_only=True)
class TelemetryOptions:
    """What a run shows while it runs."""

    progress: bool = setting(True, help="hide progress bars", type=None, check=boolean, negate=True)
    status_interval_s: float = setting(
        60.0,
        help="log a one-line status (records tokenized, encoded and committed, tokens/s, ETA) this often",
        type=float,
        check=seconds(allow_zero=False),
    )

    def __post_init__(self) -> None:
        _check_fields(self)


GROUPS: dict[str, type] = {
    "reading": ReadingOptions,
    "embedding": EmbeddingOptions,
    "chunking": ChunkingOptions,
    "encoding": EncodingOptions,
    "writing": WritingOptions,
    "cluster": ClusterOptions,
    "lease": LeaseOptions,
    "budget": BudgetOptions,
    "iceberg": IcebergOptions,
    "telemetry": TelemetryOptions,
}

# field name -> the group (JobConfig attribute) that declares it
FIELD_GROUP: dict[str, str] = {f.name: attr for attr, cls in GROUPS.items() for f in fields(cls)}


def job_fields() -> tuple[dataclasses.Field, ...]:
    """Every ``run`` setting, group by group (the flag table's order)."""
    return tuple(f for cls in GROUPS.values() for f in fields(cls))


def _check_fields(group: Any) -> None:
    """Each declared field's own check (``setting(check=...)``)."""
    settings.validate(type(group), {f.name: getattr(group, f.name) for f in fields(group)})


@dataclass(frozen=True, kw_only=True)
class PlanOptions:
    """What only ``plan`` takes: a cluster to describe (instead of the connected one) and the cost
    estimate's sample and price."""

    gpus: int | None = setting(
        None, help="describe a cluster: total GPUs", type=int, check=int_range(0, 1 << 16), commands=PLAN
    )
    cpus: float | None = setting(
        None, help="describe a cluster: total CPUs", type=float, check=positive_number, commands=PLAN
    )
    nodes: int = setting(1, help="describe a cluster: nodes", type=int, check=int_range(1, 1 << 16), commands=PLAN)
    accelerator: str | None = setting(
        None, help="describe a cluster: accelerator type (T4, L4, A10G, A100-80G, H100, ...)", commands=PLAN
    )
    sample_shards: int = setting(
        16,
        help="with --input: read a sample from this many shards, spread over the listing",
        type=int,
        check=int_range(1, 1 << 16),
        commands=PLAN,
    )
    sample_records: int = setting(
        5000,
        help="with --input: read at most this many records in all for the estimate",
        type=int,
        check=int_range(1, 1 << 24),
        commands=PLAN,
    )
    calibrate: bool = setting(
        False,
        help="with --input: measure the encode rate on this cluster's accelerator with the corpus's own passages "
        "(the job's encode stage and settings, at most --calibrate-seconds), write it to --calibration, and plan "
        "with it",
        type=None,
        check=boolean,
        commands=PLAN,
    )
    calibrate_seconds: float = setting(
        120.0,
        help="the most a calibration may take (per accelerator type)",
        type=float,
        check=seconds(allow_zero=False),
        commands=PLAN,
    )
    calibration: str | None = setting(
        None,
        help="the calibration file (local path or object-storage URI) --calibrate writes and the plan reads; a "
        "calibration made with another model, torch or device is refused",
        metavar="URI",
        commands=PLAN,
    )
    from_run: str | None = setting(
        None,
        help="plan with the encode rate measured by the last complete run of this output (its _manifest.json)",
        metavar="OUTPUT",
        commands=PLAN,
    )

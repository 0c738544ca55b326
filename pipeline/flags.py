"""The one flag table: every ``run`` and ``plan`` flag, its type, default, check and help.

``cli`` builds both parsers from it, ``JobConfig`` runs its checks, ``plan`` runs the same
checks on its values, and ``docs/flags.md`` is generated from it (a test keeps them equal).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UsageError
from pipeline.io.sources import INPUT_FORMATS
from pipeline.stages.e5 import ATTENTION_MODES, DEFAULT_MODEL, DEVICES, DTYPES, OUTPUT_DTYPES, PREFIXES  # the choices

Check = Callable[[str, Any], None]


def int_range(low: int, high: int) -> Check:
    def check(flag: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise UsageError(f"--{flag} must be an integer in [{low}, {high}]; got {value!r}")

    return check


def seconds(*, allow_zero: bool) -> Check:
    def check(flag: str, value: Any) -> None:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if not ok or not (value >= 0 if allow_zero else value > 0):
            raise UsageError(f"--{flag} must be a number of seconds {'>= 0' if allow_zero else '> 0'}; got {value!r}")

    return check


def positive_number(flag: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise UsageError(f"--{flag} must be > 0, got {value!r}")


def fraction(flag: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise UsageError(f"--{flag} must be within [0, 1], got {value!r}")


def boolean(flag: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise UsageError(f"--{flag} must be true or false; got {value!r}")


def one_of(valid: Sequence[str]) -> Check:
    def check(flag: str, value: Any) -> None:
        if value not in valid:
            raise UsageError(f"--{flag} must be one of {', '.join(valid)}; got {value!r}")

    return check


def token_buckets(text: str) -> tuple[int, ...]:
    """``128,256,512`` -> (128, 256, 512)."""
    try:
        return tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"comma-separated token counts, e.g. 128,256,512; got {text!r}") from e


def ascending_buckets(flag: str, value: Any) -> None:
    if value is None:
        return
    ok = (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )
    if not ok or any(v < 8 for v in value) or list(value) != sorted(set(value)):
        raise UsageError(f"--{flag} must be ascending token counts >= 8, e.g. 128,256,512; got {value!r}")


def not_empty(flag: str, value: Any) -> None:
    if not value:
        raise UsageError(f"--{flag} must not be empty")


@dataclass(frozen=True)
class Flag:
    name: str  # without the leading dashes
    help: str
    type: Callable[[str], Any] | None = str  # None: an on/off switch
    default: Any = None
    choices: tuple[str, ...] | None = None
    check: Check | None = None  # applied when the value is not None
    commands: frozenset[str] = frozenset({"run"})
    dest: str = ""  # the JobConfig field; default: the name with underscores
    metavar: str | None = None
    repeat: bool = False
    negate: bool = False  # --no-x sets dest to False

    @property
    def field(self) -> str:
        return self.dest or self.name.replace("-", "_")

    def validate(self, value: Any) -> None:
        if value is not None and self.check is not None:
            self.check(self.name, value)


RUN, PLAN = frozenset({"run"}), frozenset({"plan"})
BOTH = RUN | PLAN

FLAGS: tuple[Flag, ...] = (
    Flag(
        "input",
        "input folder/prefix or file (s3://, gs://, file paths, ...), literal; repeatable",
        dest="inputs",
        repeat=True,
        metavar="URI",
        commands=BOTH,
    ),
    Flag("output", "output folder/prefix for Parquet files (literal)", metavar="URI"),
    Flag(
        "model",
        "Hub id, local folder, or a folder in object storage (s3://…/, copied once per node)",
        default=DEFAULT_MODEL,
        commands=BOTH,
    ),
    Flag("revision", "Hub revision (branch/tag/commit); the driver resolves it to a commit sha that all actors load"),
    Flag(
        "prefix",
        "E5 input prefix: 'passage: ', 'query: ' or none",
        default="passage",
        choices=tuple(PREFIXES),
        check=one_of(tuple(PREFIXES)),
        commands=BOTH,
    ),
    Flag(
        "max-length",
        "truncate inputs at this many tokens",
        type=int,
        default=512,
        check=int_range(8, 8192),
        commands=BOTH,
    ),
    Flag(
        "chunk-tokens",
        "long documents: embed every window of at most this many tokens (prefix, title and special "
        "tokens included; <= --max-length), one output row per window, instead of truncating",
        type=int,
        check=int_range(16, 8192),
        commands=BOTH,
    ),
    Flag(
        "chunk-overlap",
        "with --chunk-tokens: tokens repeated between neighbouring windows (at most half a window)",
        type=int,
        default=32,
        check=int_range(0, 4096),
        commands=BOTH,
    ),
    Flag(
        "max-chunks-per-record",
        "with --chunk-tokens: windows past this many are cut off (the record's rows say truncated)",
        type=int,
        default=256,
        check=int_range(1, 1 << 20),
        commands=BOTH,
    ),
    Flag(
        "batch-size",
        "fixed rows per forward pass (default: from the resource plan, which also checks that it fits)",
        type=int,
        check=int_range(1, 1 << 20),
        commands=BOTH,
    ),
    Flag(
        "dtype",
        "compute dtype; auto = bf16 (fp16 on GPUs without bf16) on GPU, float32 on CPU",
        default="auto",
        choices=DTYPES,
        check=one_of(DTYPES),
        commands=BOTH,
    ),
    Flag(
        "output-dtype",
        "stored embedding dtype (float16 halves storage)",
        default="float32",
        choices=OUTPUT_DTYPES,
        check=one_of(OUTPUT_DTYPES),
    ),
    Flag(
        "device",
        "where to encode (auto: GPU if the cluster has one)",
        default="auto",
        choices=DEVICES,
        check=one_of(DEVICES),
        commands=BOTH,
    ),
    Flag(
        "compile",
        "torch.compile the encoder (opt-in: a warm-up per actor; measure with `e5-embed bench`)",
        type=None,
        default=False,
        check=boolean,
    ),
    Flag(
        "attention",
        "encoder micro-batches: padded (SDPA over a padding mask) or packed (rows end to end, variable-length "
        "attention on CUDA; same embeddings, a GPU fast-path candidate: measure with `e5-embed bench`)",
        default="padded",
        choices=ATTENTION_MODES,
        check=one_of(ATTENTION_MODES),
    ),
    Flag(
        "shape-buckets",
        "compile the encoder for these padded widths only (e.g. 128,256,512; rows padded to --batch-size), "
        "warmed at actor start, CUDA graphs per shape on GPU: a fast-path candidate, measure with `e5-embed bench`",
        type=token_buckets,
        check=ascending_buckets,
    ),
    Flag(
        "input-format",
        "override format detection by extension (.txt, .jsonl/.ndjson/.json, .parquet; .gz/.zst)",
        default="auto",
        choices=INPUT_FORMATS,
        check=one_of(INPUT_FORMATS),
        commands=BOTH,
    ),
    Flag("text-field", "field holding the text", default="text", check=not_empty, commands=BOTH),
    Flag(
        "id-field",
        "field holding the id; missing ids become '<shard path>:<row>'",
        default="id",
        check=not_empty,
        commands=BOTH,
    ),
    Flag("title-field", "optional title field, embedded as f'{title} {text}'", commands=BOTH),
    Flag(
        "storage-options",
        "fsspec storage options as JSON, or @FILE holding it (keeps secrets out of process "
        "listings); S3 already uses the AWS chain and AWS_ENDPOINT_URL",
        metavar="JSON",
        commands=BOTH,
    ),
    Flag("rows-per-block", "rows per block read from a shard", type=int, default=4096, check=int_range(1, 1 << 22)),
    Flag(
        "rows-per-file",
        "most rows per output file; also the unit of work redone after a crash",
        type=int,
        default=32768,
        check=int_range(1, 1 << 24),
    ),
    Flag("gpu-actors", "encode actors (default: from the plan)", type=int, check=int_range(1, 1 << 16), commands=BOTH),
    Flag(
        "actors-per-gpu",
        "encode actors sharing one GPU (default: plan)",
        type=int,
        check=int_range(1, 1 << 16),
        commands=BOTH,
    ),
    Flag(
        "tokenizer-actors", "max tokenizer actors (default: plan)", type=int, check=int_range(1, 1 << 16), commands=BOTH
    ),
    Flag(
        "gpu-memory-gb",
        "VRAM per GPU, overriding the probe and profile",
        type=float,
        check=positive_number,
        commands=BOTH,
    ),
    Flag(
        "min-gpus",
        "autoscaling clusters: ask for and wait until this many GPUs have joined (see --gpu-wait-s)",
        type=int,
        check=int_range(0, 1 << 16),
    ),
    Flag(
        "max-gpus",
        "the most GPUs the encode pool uses: room to grow on autoscaling clusters, a cap on bigger "
        "ones (implies --min-gpus 1)",
        type=int,
        check=int_range(1, 1 << 16),
        commands=BOTH,
    ),
    Flag(
        "gpu-wait-s",
        "how long --min-gpus waits before the job fails with exit 1",
        type=float,
        default=900.0,
        check=seconds(allow_zero=False),
    ),
    Flag(
        "scheduler-config",
        "per-accelerator scheduler profiles laid over the packaged ones (pipeline/planning/scheduler.yaml)",
        metavar="YAML",
        commands=BOTH,
    ),
    Flag(
        "max-bad-fraction",
        "fail (exit 1, no _SUCCESS) when more than this fraction of records is rejected",
        type=float,
        default=0.001,
        check=fraction,
    ),
    Flag(
        "skip-corrupt-remainders",
        "complete the job even when a compressed shard breaks off part-way (what "
        "decodes is embedded; the shards are listed in the manifest). Default: such a shard fails the job",
        type=None,
        default=False,
        check=boolean,
    ),
    Flag(
        "ignore-unknown-files",
        "skip files of unknown format inside input folders (they are listed in the manifest). "
        "Default: such files fail the run (exit 2), named",
        type=None,
        default=False,
        check=boolean,
        commands=BOTH,
    ),
    Flag(
        "max-record-bytes",
        "reject a record (line) longer than this without reading it whole",
        type=int,
        default=16 << 20,
        check=int_range(1024, 1 << 31),
    ),
    Flag(
        "lease-wait-s",
        "when another run holds the output, wait this long for it before exit 1",
        type=float,
        default=0.0,
        check=seconds(allow_zero=True),
    ),
    Flag(
        "lease-ttl-s",
        "the output lease expires this long after its last renewal, so a retry after a crash proceeds",
        type=float,
        default=120.0,
        check=seconds(allow_zero=False),
    ),
    Flag(
        "shared-local-path",
        "local paths are on storage every node shares (NFS, ...); without it a multi-node "
        "cluster refuses local --input/--output",
        type=None,
        default=False,
        check=boolean,
    ),
    Flag(
        "overwrite",
        "start over: remove _SUCCESS, then delete the files this tool wrote in --output",
        type=None,
        default=False,
        check=boolean,
    ),
    Flag(
        "update",
        "bring an output whose input shards changed, vanished or were added up to date, encoding only "
        "records whose text is new or changed (unchanged vectors are carried over by text_hash; rows of "
        "edited, deleted and vanished records are removed). Without it a changed shard is refused",
        type=None,
        default=False,
        check=boolean,
    ),
    Flag(
        "reuse-from",
        "take vectors from another output made with the same model and settings, matched by text_hash "
        "(a new snapshot, a re-sharded corpus); repeatable",
        dest="reuse_from",
        default=(),
        repeat=True,
        metavar="URI",
    ),
    Flag("ray-address", "Ray cluster address (default: RAY_ADDRESS, else start a local one)", commands=BOTH),
    Flag("progress", "hide progress bars", type=None, default=True, check=boolean, negate=True),
    Flag(
        "status-interval-s",
        "log a one-line status (records tokenized, encoded and committed, tokens/s, ETA) this often",
        type=float,
        default=60.0,
        check=seconds(allow_zero=False),
    ),
    # plan only: describe a cluster instead of probing one
    Flag("gpus", "describe a cluster: total GPUs", type=int, check=int_range(0, 1 << 16), commands=PLAN),
    Flag("cpus", "describe a cluster: total CPUs", type=float, check=positive_number, commands=PLAN),
    Flag("nodes", "describe a cluster: nodes", type=int, default=1, check=int_range(1, 1 << 16), commands=PLAN),
    Flag("accelerator", "describe a cluster: accelerator type (T4, L4, A10G, A100-80G, H100, ...)", commands=PLAN),
    Flag(
        "sample-shards",
        "with --input: read a sample from this many shards, spread over the listing",
        type=int,
        default=16,
        check=int_range(1, 1 << 16),
        commands=PLAN,
    ),
    Flag(
        "sample-records",
        "with --input: read at most this many records in all for the estimate",
        type=int,
        default=5000,
        check=int_range(1, 1 << 24),
        commands=PLAN,
    ),
    Flag(
        "gpu-hour-price",
        "with --input: price of one GPU-hour, for the cost estimate",
        type=float,
        check=positive_number,
        commands=PLAN,
    ),
)

BY_FIELD = {f.field: f for f in FLAGS}


def option(flag: Flag) -> str:
    return f"--no-{flag.name}" if flag.negate else f"--{flag.name}"


def add_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the command's flags. For ``run`` nothing has a parser default, so a ``--config`` job
    file's values are overridden only by flags actually given; for ``plan`` defaults apply."""
    for flag in FLAGS:
        if command not in flag.commands:
            continue
        default = argparse.SUPPRESS if command == "run" else flag.default
        kw: dict[str, Any] = {"dest": flag.field, "default": default, "help": _help(flag)}
        if flag.type is None:
            kw["action"] = "store_false" if flag.negate else "store_true"
        else:
            kw.update(type=flag.type, metavar=flag.metavar)
            if flag.choices:
                kw["choices"] = flag.choices
            if flag.repeat:
                kw["action"] = "append"
        parser.add_argument(option(flag), **kw)


def _help(flag: Flag) -> str:
    if flag.type is None or flag.default in (None, ()):
        return flag.help
    return f"{flag.help} (default {flag.default})"


def validate(values: dict[str, Any], fields: Sequence[str] | None = None) -> None:
    """Run each flag's check on the given values (by JobConfig field name)."""
    for name in fields if fields is not None else values:
        flag = BY_FIELD.get(name)
        if flag is not None and name in values:
            flag.validate(values[name])


def markdown_table() -> str:
    """The flag reference for docs/flags.md."""
    lines = ["| flag | `run` (its environment variable) | `plan` | default | what |", "|---|---|---|---|---|"]
    for flag in FLAGS:
        default = "" if flag.default in (None, ()) or flag.type is None else f"`{flag.default}`"
        if flag.choices:
            default += f" ({' / '.join(flag.choices)})"
        what = flag.help.replace("|", "\\|")
        env = f"`{env_name(flag)}`" if "run" in flag.commands else ""
        lines.append(f"| `{option(flag)}` | {env} | {'✓' if 'plan' in flag.commands else ''} | {default} | {what} |")
    return "\n".join(lines) + "\n"


ENV_PREFIX = "E5_EMBED_"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def env_name(flag: Flag) -> str:
    return ENV_PREFIX + flag.field.upper()


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """``run`` settings from ``E5_EMBED_<FIELD>`` variables (``E5_EMBED_MAX_LENGTH=256``,
    ``E5_EMBED_INPUTS='["s3://a/", "s3://b/"]'`` or one URI, ``E5_EMBED_OVERWRITE=true``)."""
    values: dict[str, Any] = {}
    for flag in FLAGS:
        raw = environ.get(env_name(flag))
        if "run" not in flag.commands or raw is None:
            continue
        try:
            if flag.type is None:
                low = raw.strip().lower()
                if low not in _TRUE | _FALSE:
                    raise ValueError(f"expected true or false, got {raw!r}")
                values[flag.field] = low in _TRUE
            elif flag.repeat:
                parsed = json.loads(raw) if raw.lstrip().startswith("[") else [raw]
                values[flag.field] = [flag.type(v) for v in parsed]
            else:
                values[flag.field] = flag.type(raw)
        except (ValueError, TypeError) as e:
            raise UsageError(f"{env_name(flag)}: {e}") from e
    return values

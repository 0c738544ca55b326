"""``e5-embed`` / ``python -m pipeline``: the command line.

Exit codes: 0 done (or nothing to do), 1 the job failed, 2 usage/config error
(one line on stderr; ``--debug`` adds the traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Any, Callable, Sequence

from pipeline import __version__
from pipeline.config import DEVICES, DTYPES, INPUT_FORMATS, OUTPUT_DTYPES, PREFIXES, JobConfig, parse_storage_options
from pipeline.errors import JobError, UsageError
from pipeline.storage import ScrubFilter, scrub

logger = logging.getLogger("pipeline")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(f"{message} (see {self.prog} --help)")


def _add_job_flags(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS  # only flags given on the command line override the --config file
    p.add_argument("--config", metavar="YAML", default=S, help="job file whose keys mirror these flags; flags win")
    p.add_argument("--input", dest="inputs", action="append", metavar="URI", default=S,
                   help="input folder/prefix, glob or file (s3://, gs://, file paths, ...); repeatable")
    p.add_argument("--output", metavar="URI", default=S, help="output folder/prefix for Parquet files")
    p.add_argument("--model", default=S, help="Hub id or local folder (default intfloat/e5-base-v2)")
    p.add_argument("--revision", default=S, help="Hub revision (commit/tag) to pin the model to")
    p.add_argument("--prefix", choices=tuple(PREFIXES), default=S,
                   help="E5 input prefix: 'passage: ' (default), 'query: ' or none")
    p.add_argument("--max-length", type=int, default=S, help="truncate inputs at this many tokens (default 512)")
    p.add_argument("--batch-size", type=int, default=S,
                   help="fixed rows per forward pass (default: from the resource plan)")
    p.add_argument("--dtype", choices=DTYPES, default=S,
                   help="compute dtype; auto = bf16 (fp16 on GPUs without bf16) on GPU, float32 on CPU")
    p.add_argument("--output-dtype", choices=OUTPUT_DTYPES, default=S,
                   help="stored embedding dtype (float16 halves storage; default float32)")
    p.add_argument("--device", choices=DEVICES, default=S, help="where to encode (default auto: GPU if the cluster has one)")
    p.add_argument("--compile", action="store_true", default=S,
                   help="torch.compile the encoder (opt-in: a warm-up per actor; measure with `e5-embed bench`)")
    p.add_argument("--input-format", choices=INPUT_FORMATS, default=S,
                   help="override format detection by extension (.txt, .jsonl/.ndjson/.json, .parquet; .gz/.zst)")
    p.add_argument("--text-field", default=S, help="field holding the text (default 'text')")
    p.add_argument("--id-field", default=S,
                   help="field holding the id (default 'id'); missing ids become '<shard path>:<row>'")
    p.add_argument("--title-field", default=S, help="optional title field, embedded as f'{title} {text}'")
    p.add_argument("--storage-options", default=S, metavar="JSON",
                   help="fsspec storage options as JSON, or @FILE holding it (keeps secrets out of process "
                        "listings); S3 already uses the AWS chain and AWS_ENDPOINT_URL")
    p.add_argument("--rows-per-block", type=int, default=S, help="rows per block read from a shard (default 4096)")
    p.add_argument("--rows-per-file", type=int, default=S, help="most rows per output file; also the unit of work redone after a crash (default 32768)")
    p.add_argument("--gpu-actors", type=int, default=S, help="encode actors (default: from the plan)")
    p.add_argument("--actors-per-gpu", type=int, default=S, help="encode actors sharing one GPU (default: plan)")
    p.add_argument("--tokenizer-actors", type=int, default=S, help="max tokenizer actors (default: plan)")
    p.add_argument("--gpu-memory-gb", type=float, default=S, help="VRAM per GPU, overriding the probe")
    p.add_argument("--min-gpus", type=int, default=S,
                   help="autoscaling clusters: ask for and wait until this many GPUs have joined (see --gpu-wait-s)")
    p.add_argument("--max-gpus", type=int, default=S,
                   help="the most GPUs the encode pool uses: room to grow on autoscaling clusters, a cap on "
                        "bigger ones (implies --min-gpus 1)")
    p.add_argument("--gpu-wait-s", type=float, default=S,
                   help="how long --min-gpus waits before the job fails with exit 1 (default 900)")
    p.add_argument("--scheduler-config", metavar="YAML", default=S,
                   help="per-accelerator scheduler profiles (default: cluster/scheduler.yaml when present)")
    p.add_argument("--max-bad-fraction", type=float, default=S,
                   help="fail (exit 1, no _SUCCESS) when more than this fraction of records is rejected (default 0.001)")
    p.add_argument("--skip-corrupt-remainders", action="store_true", default=S,
                   help="complete the job even when a compressed shard breaks off part-way (what decodes is "
                        "embedded; the shards are listed in the manifest). Default: such a shard fails the job")
    p.add_argument("--max-record-bytes", type=int, default=S,
                   help="reject a record (line) longer than this without reading it whole (default 16 MiB)")
    p.add_argument("--lease-wait-s", type=float, default=S,
                   help="when another run holds the output, wait this long for it before exit 1 (default 0)")
    p.add_argument("--lease-ttl-s", type=float, default=S,
                   help="the output lease expires this long after its last renewal, so a retry after a "
                        "crash proceeds (default 120)")
    p.add_argument("--shared-local-path", action="store_true", default=S,
                   help="local paths are on storage every node shares (NFS, ...); without it a multi-node "
                        "cluster refuses local --input/--output")
    p.add_argument("--overwrite", action="store_true", default=S,
                   help="start over: remove _SUCCESS, then delete the files this tool wrote in --output")
    p.add_argument("--ray-address", default=S, help="Ray cluster address (default: RAY_ADDRESS, else start a local one)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=S, help="hide progress bars")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="e5-embed", description="Embed text corpora with E5 on a Ray cluster.")
    parser.add_argument("--version", action="version", version=f"e5-embed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run an embedding job", description="Embed --input shards into Parquet at --output.")
    _add_job_flags(run)
    _common(run)
    run.set_defaults(handler=cmd_run)
    plan = sub.add_parser("plan", help="print the resource plan for the live or a described cluster",
                          description="The GPU actor pool, batch size and tokenizer pool the job would use. "
                                      "Without --gpus/--cpus it probes the live Ray cluster (RAY_ADDRESS).")
    plan.add_argument("--model", default="intfloat/e5-base-v2",
                      help="E5 family Hub id (shapes known offline) or a local folder with config.json")
    plan.add_argument("--max-length", type=int, default=512)
    plan.add_argument("--dtype", choices=DTYPES, default="auto")
    plan.add_argument("--device", choices=DEVICES, default="auto")
    plan.add_argument("--batch-size", type=int, help="check that this batch fits instead of choosing one")
    plan.add_argument("--actors-per-gpu", type=int)
    plan.add_argument("--gpu-actors", type=int)
    plan.add_argument("--tokenizer-actors", type=int)
    plan.add_argument("--gpu-memory-gb", type=float, help="VRAM per GPU (overrides probe and profile)")
    plan.add_argument("--scheduler-config", metavar="YAML", help="default: cluster/scheduler.yaml")
    plan.add_argument("--gpus", type=int, help="describe a cluster: total GPUs")
    plan.add_argument("--cpus", type=float, help="describe a cluster: total CPUs")
    plan.add_argument("--nodes", type=int, default=1, help="describe a cluster: nodes")
    plan.add_argument("--accelerator", help="describe a cluster: accelerator type (T4, L4, A10G, A100-80G, H100, ...)")
    plan.add_argument("--max-gpus", type=int, help="autoscaling: the most GPUs the pool may grow to")
    plan.add_argument("--ray-address", help="live cluster address (default RAY_ADDRESS)")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    _common(plan)
    plan.set_defaults(handler=cmd_plan)
    bench = sub.add_parser("bench", help="benchmark the encode path against the model card code and "
                                         "sentence-transformers, and the whole pipeline",
                           description="Times, on the same texts and device: the model card's reference code, "
                                       "sentence-transformers encode(), this project's encode stage, and the whole "
                                       "Ray pipeline. Writes bench.json and bench.md.")
    bench.add_argument("--docs", type=int, default=2000, help="corpus size (default 2000)")
    bench.add_argument("--device", choices=DEVICES, default="auto")
    bench.add_argument("--model", help="default: bundled MiniLM on CPU, e5-base-v2 architecture (random) on GPU")
    bench.add_argument("--batch-size", type=int)
    bench.add_argument("--max-length", type=int, default=512)
    bench.add_argument("--rows", help="comma-separated rows: reference, st_encode, encode, encode_compiled, pipeline "
                                      "(default: all but encode_compiled)")
    bench.add_argument("--memory-check", action="store_true", help="also run the pipeline on 4x the corpus")
    bench.add_argument("--out", default="bench-results", help="folder for bench.json and bench.md")
    _common(bench)
    bench.set_defaults(handler=cmd_bench)
    demo = sub.add_parser("demo", help="offline demo: local S3 (moto), local Ray, bundled corpus and model",
                          description="Runs the whole job on a bundled corpus through a local S3 endpoint, then "
                                      "answers a query against the result.")
    demo.add_argument("--query", default="how do I compress data with gzip?", help="query to search for")
    demo.add_argument("--top-k", type=int, default=3)
    _common(demo)
    demo.set_defaults(handler=cmd_demo)
    return parser


def job_config_from_args(args: argparse.Namespace) -> JobConfig:
    values: dict[str, Any] = {}
    if "config" in args:
        values.update(load_yaml(args.config))
    for name in JobConfig.field_names():
        if name in args:
            values[name] = getattr(args, name)
    if isinstance(values.get("storage_options"), str):
        values["storage_options"] = parse_storage_options(values["storage_options"])
    for required in ("inputs", "output"):
        if required not in values and required.rstrip("s") not in values:
            raise UsageError(f"--{required.rstrip('s')} is required (flag or key in --config)")
    return JobConfig.from_mapping(values)


def load_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise UsageError(f"cannot read --config {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise UsageError(f"--config {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise UsageError(f"--config {path} must be a mapping of option: value")
    if "input" in data and isinstance(data["input"], str):
        data["input"] = [data["input"]]
    return data


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.runner import run_job

    config = job_config_from_args(args)
    summary = run_job(config)
    sys.stdout.write(summary.line() + "\n")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from pipeline.model import offline_info
    from pipeline.plan import ClusterSpec, PlanRequest, make_plan
    from pipeline.scheduler_config import load_scheduler_config

    for name in ("max_length", "batch_size", "actors_per_gpu", "gpu_actors", "tokenizer_actors", "gpus", "nodes",
                 "max_gpus"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "gpus" else 1):
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")
    info = offline_info(args.model)
    request = PlanRequest(max_length=args.max_length, dtype=args.dtype, device=args.device,
                          batch_size=args.batch_size, actors_per_gpu=args.actors_per_gpu, gpu_actors=args.gpu_actors,
                          tokenizer_actors=args.tokenizer_actors, gpu_memory_gb=args.gpu_memory_gb)
    scheduler = load_scheduler_config(args.scheduler_config)
    if args.gpus is not None or args.cpus is not None:
        cluster = ClusterSpec(gpus=args.gpus or 0, cpus=args.cpus or max(1.0, 8.0 * (args.gpus or 1)),
                              nodes=args.nodes, accelerator=args.accelerator, max_gpus=args.max_gpus)
    else:
        from pipeline.runner import ray_session

        with ray_session(args.ray_address):
            cluster = ClusterSpec.from_ray()
    plan = make_plan(cluster, info, request, scheduler)
    if args.json:
        out = {"model": info.name, "cluster": {k: v for k, v in vars(cluster).items()},
               "scheduler_config": scheduler.source, **plan.to_dict()}
        sys.stdout.write(json.dumps(out, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(f"{plan.describe()}\n")
        for note in plan.notes:
            sys.stdout.write(f"  note: {note}\n")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from pipeline.bench import DEFAULT_ROWS, ROWS, markdown, run_benchmark

    rows = tuple(r.strip() for r in args.rows.split(",") if r.strip()) if args.rows else DEFAULT_ROWS
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise UsageError(f"--rows: unknown {', '.join(unknown)}; valid: {', '.join(ROWS)}")
    if args.docs < 1:
        raise UsageError("--docs must be >= 1")
    report = run_benchmark(docs=args.docs, device=args.device, model=args.model, batch_size=args.batch_size,
                           max_length=args.max_length, rows=rows, memory_check=args.memory_check, out_dir=args.out)
    sys.stdout.write(markdown(report))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    run_demo(query=args.query, top_k=args.top_k, out=sys.stdout)
    return 0


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:  # every line this process logs is scrubbed of secrets
        if not any(isinstance(f, ScrubFilter) for f in handler.filters):
            handler.addFilter(ScrubFilter())
    for noisy in ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3", "filelock", "werkzeug", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _configure_logging(debug)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except (UsageError, JobError) as e:
        if debug:
            traceback.print_exc()
        label = "error" if isinstance(e, UsageError) else "job failed"
        sys.stderr.write(f"e5-embed: {label}: {scrub(str(e))}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("e5-embed: interrupted\n")
        return 130
    except Exception as e:  # anything unexpected is a job failure, never a silent success
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"e5-embed: job failed: {type(e).__name__}: {scrub(str(e)).splitlines()[0] if str(e) else ''}"
                         " (rerun with --debug for the traceback)\n")
        return 1

"""``e5-embed`` / ``python -m pipeline``: the command line.

Exit codes: 0 done (or nothing to do), 1 the job failed, 2 usage/config error
(one line on stderr; ``--debug`` adds the traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from pipeline import __version__, flags
from pipeline.config import JobConfig, field_spec, parse_storage_options, plan_config_from_args
from pipeline.errors import E5EmbedError, UsageError
from pipeline.io.storage import ScrubFilter, scrub
from pipeline.stages.e5 import ATTENTION_MODES, DEVICES, PREFIXES

logger = logging.getLogger("pipeline")


# What a job file named by an untrusted caller may not set: where the job runs, and secrets.
UNTRUSTED_CONFIG_DENIED = frozenset({"ray_address", "storage_options"})


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(f"{message} (see {self.prog} --help)")


def _add_job_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", metavar="YAML", default=argparse.SUPPRESS, help="job file whose keys mirror these flags; flags win"
    )
    p.add_argument(
        "--untrusted-config",
        action="store_true",
        default=argparse.SUPPRESS,
        help="the --config file was chosen by an untrusted caller (an Airflow trigger): refuse its keys that "
        f"pick the cluster or carry secrets ({', '.join(sorted(UNTRUSTED_CONFIG_DENIED))})",
    )
    flags.add_flags(p, "run")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="e5-embed", description="Embed text corpora with E5 on a Ray cluster.")
    parser.add_argument("--version", action="version", version=f"e5-embed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser(
        "run", help="run an embedding job", description="Embed --input shards into Parquet at --output."
    )
    _add_job_flags(run)
    _common(run)
    run.set_defaults(handler=cmd_run)
    plan = sub.add_parser(
        "plan",
        help="print the resource plan for the live or a described cluster",
        description="The GPU actor pool, batch size and tokenizer pool the job would use. "
        "Without --gpus/--cpus it probes the live Ray cluster (RAY_ADDRESS).",
    )
    flags.add_flags(plan, "plan")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    _common(plan)
    plan.set_defaults(handler=cmd_plan)
    bench = sub.add_parser(
        "bench",
        help="benchmark the encode path against the model card code and sentence-transformers, and the whole pipeline",
        description="Times, on the same texts and device: the model card's reference code, "
        "sentence-transformers encode(), this project's encode stage, and the whole "
        "Ray pipeline. Writes bench.json and bench.md.",
    )
    bench.add_argument("--docs", type=int, default=2000, help="corpus size (default 2000)")
    bench.add_argument("--device", choices=DEVICES, default="auto")
    bench.add_argument("--model", help="default: bundled MiniLM on CPU, e5-base-v2 architecture (random) on GPU")
    bench.add_argument("--batch-size", type=int)
    bench.add_argument("--max-length", type=int, default=512)
    bench.add_argument(
        "--rows",
        help="comma-separated rows: reference, st_encode, encode, encode_compiled, encode_packed, "
        "encode_buckets, pipeline (default: reference, st_encode, encode, pipeline)",
    )
    bench.add_argument(
        "--memory-check", action="store_true", help="also the pipeline's peak host memory at both sizes it runs"
    )
    bench.add_argument(
        "--marginal-factor",
        type=int,
        default=4,
        help="the pipeline row runs the whole job at --docs and this many times --docs: the marginal rate "
        "between them, start-up apart (default 4)",
    )
    bench.add_argument(
        "--longdoc",
        action="store_true",
        help="also the long-document retrieval check: recall of truncation vs --chunk-tokens windows (real weights)",
    )
    bench.add_argument(
        "--cpu-side",
        metavar="SMALL,LARGE",
        help="also the CPU side: the whole job at two record counts (e.g. 80000,320000) with a stand-in encoder "
        "run as on a GPU node, every process's CPU by role, marginal tokens per CPU-s against the raw tokenizer",
    )
    bench.add_argument("--actors-per-gpu", type=int, help="the pipeline row's encode actors per GPU (default: plan)")
    bench.add_argument(
        "--pipeline-attention", choices=ATTENTION_MODES, default=None, help="the pipeline row's --attention"
    )
    bench.add_argument("--out", default="bench-results", help="folder for bench.json and bench.md")
    _common(bench)
    bench.set_defaults(handler=cmd_bench)
    verify = sub.add_parser(
        "verify",
        help="audit a finished output: every input record embedded once or rejected, sampled vectors "
        "recomputed by the model card's algorithm",
        description="Read-only: the completeness proof made again from the files' own rows against the recorded "
        "listing, and N sampled vectors recomputed (float32, CPU, the card's mean pooling) from their source "
        "rows. Exit 0: it holds; 2: a defect (named) or a usage error; 1: it could not finish.",
    )
    verify.add_argument("--output", required=True, help="the output to audit (a run's --output)")
    verify.add_argument("--iceberg-table", help="audit this table's snapshot of the output (NAMESPACE.TABLE)")
    verify.add_argument("--iceberg-catalog", help="the table's catalog by name (default: the output's embedded one)")
    verify.add_argument("--snapshot", type=int, help="the table's snapshot id (default: its current one)")
    verify.add_argument(
        "--sample", type=int, help="rows whose vectors are recomputed (default 100, or every row of a smaller output)"
    )
    verify.add_argument("--seed", type=int, default=0, help="the sample's seed (the same seed draws the same rows)")
    verify.add_argument(
        "--threshold",
        type=float,
        help="the lowest cosine a stored vector may have to the card's (default by the output's compute dtype: "
        "float32 0.9999, bf16/fp16 0.999)",
    )
    verify.add_argument("--model", help="a local copy of the recorded model (must hash to the recorded digest)")
    verify.add_argument("--storage-options", default="", metavar="JSON", help="fsspec storage options (JSON or @FILE)")
    verify.add_argument("--ray-address", help="recompute on this Ray cluster's workers (large samples)")
    verify.add_argument("--max-seconds", type=float, default=3600.0, help="bound on the recomputation on a cluster")
    verify.add_argument("--json", action="store_true", help="every figure as JSON on stdout")
    _common(verify)
    verify.set_defaults(handler=cmd_verify)
    demo = sub.add_parser(
        "demo",
        help="offline demo: local S3 (moto), local Ray, bundled corpus and model",
        description="Runs the whole job on a bundled corpus through a local S3 endpoint, then "
        "answers a query against the result.",
    )
    demo.add_argument("--query", default="how do I compress data with gzip?", help="query to search for")
    demo.add_argument("--top-k", type=int, default=3)
    _common(demo)
    demo.set_defaults(handler=cmd_demo)
    return parser


def job_config_from_args(args: argparse.Namespace) -> JobConfig:
    """Job file < ``E5_EMBED_*`` environment < flags given on the command line."""
    values: dict[str, Any] = {}
    if "config" in args:
        from_file = {_field_name(k): v for k, v in load_yaml(args.config).items()}
        denied = sorted(set(from_file) & UNTRUSTED_CONFIG_DENIED) if "untrusted_config" in args else []
        if denied:
            raise UsageError(
                f"--config {args.config} sets {', '.join(denied)}, which a job file chosen by a trigger may not "
                "(--untrusted-config): set it in the deployment (the Airflow connection or DAG file)"
            )
        values.update(from_file)
    values.update(flags.from_env(os.environ))
    values.update({name: getattr(args, name) for name in JobConfig.field_names() if name in args})
    if isinstance(values.get("storage_options"), str):
        values["storage_options"] = parse_storage_options(values["storage_options"])
    for required in ("inputs", "output"):
        if required not in values:
            raise UsageError(
                f"--{required.rstrip('s')} is required (flag, {flags.ENV_PREFIX}{required.upper()} or key in --config)"
            )
    return JobConfig.from_mapping(values)


def _field_name(key: str) -> str:
    name = str(key).replace("-", "_")
    return "inputs" if name == "input" else name


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
    config.register_secrets()  # for the process: the error this command prints last is scrubbed too
    summary = run_job(config)
    sys.stdout.write(summary.line() + "\n")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from pipeline.config import parse_storage_options
    from pipeline.io.storage import register_secrets
    from pipeline.verify.audit import VerifyRequest, verify

    options = parse_storage_options(args.storage_options) if args.storage_options else {}
    register_secrets(options, (args.output,))
    request = VerifyRequest(
        output=args.output, storage_options=options, iceberg_table=args.iceberg_table,
        iceberg_catalog=args.iceberg_catalog, snapshot=args.snapshot, sample=args.sample, seed=args.seed,
        threshold=args.threshold, model=args.model, ray_address=args.ray_address, max_seconds=args.max_seconds,
    )  # fmt: skip
    on_cluster = None
    if args.ray_address:
        from pipeline.backend.verify_tasks import recompute_on_cluster as on_cluster
    audit = verify(request, on_cluster)
    sys.stdout.write((audit.to_json() if args.json else audit.line()) + "\n")
    for defect in audit.defects[:20]:
        sys.stderr.write(f"e5-embed verify: defect: {scrub(defect)}\n")
    return audit.exit_code


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from pipeline.planning.plan import ClusterSpec, PlanRequest, make_plan
    from pipeline.planning.scheduler_config import load_scheduler_config
    from pipeline.stages.model import offline_info

    config = plan_config_from_args(args)  # typed, each setting's check applied (the run flags' own)
    info = offline_info(config.model)
    request = PlanRequest.from_job(config)
    scheduler = load_scheduler_config(config.scheduler_config)
    if config.gpus is not None or config.cpus is not None:
        cluster = ClusterSpec(
            gpus=config.gpus or 0,
            cpus=config.cpus or max(1.0, 8.0 * (config.gpus or 1)),
            nodes=config.nodes,
            accelerator=config.accelerator,
            max_gpus=config.max_gpus,
        )
        plan = make_plan(cluster, info, request, scheduler)
        estimate = _estimate(config, plan, cluster_gpus=None) if config.inputs else None
    else:
        from pipeline.backend.cluster import describe_cluster
        from pipeline.backend.dataset import ray_session

        with ray_session(config.ray_address):
            cluster = describe_cluster()
            plan = make_plan(cluster, info, request, scheduler)
            estimate = _estimate(config, plan, cluster_gpus=cluster.gpus) if config.inputs else None
    if config.calibrate and not config.inputs:
        raise UsageError("--calibrate measures with the corpus's own passages: pass --input")
    if args.json:  # presentation, not a setting
        out = {
            "model": info.name,
            "cluster": {k: v for k, v in vars(cluster).items()},
            "scheduler_config": scheduler.source,
            **plan.to_dict(),
        }
        if estimate is not None:
            out["estimate"] = estimate.to_dict()
        sys.stdout.write(json.dumps(out, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(f"{plan.describe()}\n")
        for note in plan.notes:
            sys.stdout.write(f"  note: {note}\n")
        if estimate is not None:
            sys.stdout.write(estimate.describe() + "\n")
    return 0


def _estimate(config, plan, *, cluster_gpus: int | None):
    """``plan --input``: sample the corpus and estimate records, tokens, GPU-hours and cost, at a
    rate that says where it comes from (``cluster_gpus``: the live cluster's, None: a described one)."""
    from pipeline.io.listing import list_shards
    from pipeline.io.storage import register_secrets
    from pipeline.planning.estimate import add_cost, estimate_corpus
    from pipeline.stages.model import ModelSource

    options = dict(config.storage_options)
    register_secrets(options, tuple(config.inputs))
    texts: list[str] = []
    shards = list_shards(config.inputs, options, config.input_format, ignore_unknown=config.ignore_unknown_files)
    chunk = config.chunking.settings()
    fields = field_spec(config)
    estimate = estimate_corpus(
        shards,
        storage_options=options,
        fields=fields,
        # the revision run will tokenize with (plan and run must agree on the tokenizer)
        model=ModelSource(name_or_path=config.model, revision=config.revision, storage_options=options),
        prefix=PREFIXES[config.prefix],
        max_length=config.max_length,
        chunk=chunk,
        sample_shards=config.sample_shards,
        sample_records=config.sample_records,
        batching=(plan.batch_size, plan.rows_per_encode_call, 8 if plan.device == "cuda" else 1),
        keep_texts=texts,
    )
    if config.update:  # a dry run of --update's change detection against the output
        from pipeline.planning.update_plan import estimate_update

        if not config.output:
            raise UsageError("plan --update estimates an update of an output: pass --output")
        update = estimate_update(
            config.output,
            shards,
            storage_options=options,
            fields=fields,
            prefix=PREFIXES[config.prefix],
            sample_records=config.sample_records,
        )
        estimate.update = update.to_dict()
        share = update.records_to_encode / estimate.records if estimate.records else 0.0
        estimate.tokens_embedded *= share
        estimate.notes.append(update.describe() + "; tokens, time and cost are the update's")
    on_gpu = plan.device == "cuda"
    rate, calibration = _rate(config, plan, texts, cluster_gpus)
    return add_cost(
        estimate,
        encoders=plan.encoders,
        rate=rate,
        on_gpu=on_gpu,
        gpu_hour_price=config.gpu_hour_price,
        calibrated_padding=None if calibration is None else calibration.padding_share,
    )


def _rate(config, plan, texts, cluster_gpus):
    """The rate per encoder and where it comes from: a calibration made now (--calibrate) or read
    (--calibration, refused when stale), the last run of an output (--from-run), or the profile."""
    import torch

    from pipeline.planning import calibration as cal
    from pipeline.stages.model import ModelSource
    from pipeline.stages.packed import planned_attention

    if config.calibrate:
        if not config.calibration:
            raise UsageError("--calibrate writes its result to --calibration URI: pass one")
        if cluster_gpus is None and plan.device == "cuda":
            raise UsageError("--calibrate measures the live cluster's accelerator: leave out --gpus/--cpus")
        model, model_sha = ModelSource(
            name_or_path=config.model, revision=config.revision, storage_options=config.storage_options
        ).pinned()
        where = "a GPU of the cluster" if plan.device == "cuda" else "this node's CPU (the cluster has no GPU)"
        sys.stderr.write(f"e5-embed: calibrating on {where} for at most {config.calibrate_seconds:g} s\n")
        from pipeline.backend.calibrate import calibrate_on_cluster

        measured = calibrate_on_cluster(
            gpus=cluster_gpus or 0,
            timeout_s=config.calibrate_seconds * 3 + 300,
            model=model,
            texts=texts[: config.sample_records],
            model_sha=model_sha,
            prefix=PREFIXES[config.prefix],
            max_length=config.max_length,
            batch_size=plan.batch_size,
            rows_per_call=plan.rows_per_encode_call,
            dtype=plan.dtype,
            device="cuda" if plan.device == "cuda" else "cpu",
            attention=config.attention,
            shape_buckets=config.shape_buckets,
            torch_threads=plan.torch_threads,
            max_seconds=config.calibrate_seconds,
        )
        cal.save(measured, config.calibration, config.storage_options)
        sys.stderr.write(
            f"e5-embed: calibration: {measured.tokens_per_s:,.0f} tokens/s per encoder, {measured.provenance()}; "
            f"written to {config.calibration}\n"
        )
        return cal.calibrated_rate(measured), measured
    if config.calibration:
        loaded = cal.load(config.calibration, config.storage_options)
        _, model_sha = ModelSource(
            name_or_path=config.model, revision=config.revision, storage_options=config.storage_options
        ).pinned()
        attention = planned_attention(config.attention, plan.device, plan.dtype, config.shape_buckets)
        cal.check_describes(loaded, config.calibration, plan, model_sha=model_sha, attention=attention,
                            max_length=config.max_length, torch_version=torch.__version__)  # fmt: skip
        return cal.calibrated_rate(loaded), loaded
    if config.from_run:
        from pipeline.io.storage import Storage
        from pipeline.ledger.manifest import Manifest

        manifest = Manifest.load(Storage(config.from_run, config.storage_options))
        if manifest is None:
            raise UsageError(f"--from-run {config.from_run} is not an e5-embed output (no _manifest.json)")
        return cal.run_rate(manifest.runs, config.from_run), None
    return cal.profile_rate(plan.gpu_tokens_per_s, plan.gpu_rate_source), None


def _dev_tools(module: str):
    """The benchmark and the demo live outside the product (``e5tools``) and need the demo extras."""
    import importlib

    try:
        return importlib.import_module(f"e5tools.{module}")
    except ImportError as e:
        raise UsageError(f"`e5-embed {module}` needs the dev tools: pip install 'e5-embed[demo]' ({e})") from e


def cmd_bench(args: argparse.Namespace) -> int:
    bench = _dev_tools("bench")
    DEFAULT_ROWS, ROWS, markdown, run_benchmark = bench.DEFAULT_ROWS, bench.ROWS, bench.markdown, bench.run_benchmark

    rows = tuple(r.strip() for r in args.rows.split(",") if r.strip()) if args.rows else DEFAULT_ROWS
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise UsageError(f"--rows: unknown {', '.join(unknown)}; valid: {', '.join(ROWS)}")
    if args.docs < 1:
        raise UsageError("--docs must be >= 1")
    if args.marginal_factor < 2:
        raise UsageError(
            "--marginal-factor must be >= 2 (two corpus sizes to take a marginal rate between), "
            f"not {args.marginal_factor}"
        )
    cpu_side = None
    if args.cpu_side:
        try:
            small, large = (int(x) for x in args.cpu_side.split(","))
        except ValueError as e:
            raise UsageError(f"--cpu-side: two record counts, SMALL,LARGE (got {args.cpu_side!r})") from e
        if not 0 < small < large:
            raise UsageError(f"--cpu-side: need 0 < SMALL < LARGE (got {small},{large})")
        cpu_side = (small, large)
        import importlib.util

        if importlib.util.find_spec("e5tools.rehearsal") is None:
            raise UsageError(
                "--cpu-side runs the repository's CPU accounting (e5tools.rehearsal), which the wheel leaves "
                "out: run it from a checkout of the repository"
            )
    report = run_benchmark(
        docs=args.docs,
        device=args.device,
        model=args.model,
        batch_size=args.batch_size,
        max_length=args.max_length,
        rows=rows,
        memory_check=args.memory_check,
        marginal_factor=args.marginal_factor,
        longdoc=args.longdoc,
        cpu_side=cpu_side,
        actors_per_gpu=args.actors_per_gpu,
        pipeline_attention=args.pipeline_attention,
        out_dir=args.out,
    )
    sys.stdout.write(markdown(report))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    _dev_tools("demo").run_demo(query=args.query, top_k=args.top_k, out=sys.stdout)
    return 0


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
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
    except E5EmbedError as e:  # the one mapping of the error family to exit codes
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"e5-embed: {e.label}: {' '.join(scrub(str(e)).split())}\n")  # always one line
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("e5-embed: interrupted\n")
        return 130
    except Exception as e:  # anything unexpected is a job failure, never a silent success
        if debug:
            traceback.print_exc()
        sys.stderr.write(
            f"e5-embed: job failed: {type(e).__name__}: {scrub(str(e)).splitlines()[0] if str(e) else ''}"
            " (rerun with --debug for the traceback)\n"
        )
        return 1

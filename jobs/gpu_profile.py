"""The encoder alone, on a GPU: forward-only tokens/s over a (batch x length) grid timed with CUDA
events, and a ``torch.profiler`` summary of the job's encode path (padded and packed) naming the
attention kernel that ran and the share of time the GPU sat idle.

e5-base-v2's architecture with random weights (speed does not depend on weight values). Writes
``forward.json``/``profile.json`` after every step and ``profile.md`` at the end.

    python jobs/gpu_profile.py --out $OUT/profile
    python jobs/gpu_profile.py --rehearse --out /tmp/profile   # on CPU: a tiny model and grid
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

GRID = {"batches": (64, 128, 256, 512), "lengths": (128, 256, 512), "reps": 10}
REHEARSAL_GRID = {"batches": (2, 4), "lengths": (16, 32), "reps": 2}
ATTENTION_HINTS = ("flash", "fmha", "efficient", "attention", "sdpa", "cutlass")


def job_like_batch(batch: int, length: int, pad_id: int, seed: int = 0):
    """(ids, mask) as the job's padded path hands them to the model: a length-sorted micro-batch padded
    to its longest row, so rows end between 75% and 100% of the width (the first at 100%). An all-ones
    mask is not what the job runs: transformers then drops the mask and SDPA takes its flash kernel,
    which the padded job path never uses."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.sort(rng.integers(max(1, (3 * length) // 4), length + 1, size=batch))[::-1]
    lengths[0] = length
    ids = np.full((batch, length), pad_id, dtype=np.int64)
    mask = np.zeros((batch, length), dtype=np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(1000, 30000, size=n)
        mask[i, :n] = 1
    return ids, mask


def timed(fn, cuda: bool, reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs after one warm-up (CUDA events on a GPU)."""
    import torch

    fn()
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def profile_summary(prof, cuda: bool, wall_s: float) -> dict:
    """Top kernels (or CPU ops) by self time, the attention kernel(s), and the device's idle share."""
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = sorted(events, key=lambda e: getattr(e, key, 0), reverse=True)
    busy_us = sum(getattr(e, key, 0) for e in events if not cuda or e.device_type.name == "CUDA")
    top = [{"name": e.key[:120], "self_ms": round(getattr(e, key, 0) / 1000, 3), "calls": e.count} for e in rows[:12]]
    attention = [
        t["name"] for t in top + [{"name": e.key} for e in rows] if any(h in t["name"].lower() for h in ATTENTION_HINTS)
    ]
    return {
        "top": top,
        "attention_kernels": list(dict.fromkeys(attention))[:3],
        "busy_s": round(busy_us / 1e6, 4),
        "wall_s": round(wall_s, 4),
        "idle_share": round(max(0.0, 1 - busy_us / 1e6 / wall_s), 3) if cuda and wall_s else None,
    }


def main() -> int:
    import numpy as np
    import torch

    from e5tools.bench import make_corpus
    from e5tools.device_scripts import device_or_exit, model_folder, parse_args
    from pipeline.stages.embedder import Embedder

    args = parse_args(
        "gpu_profile",
        __doc__.splitlines()[0],
        "profile",
        lambda p: p.add_argument("--docs", type=int, default=4096, help="documents for the profiled encode path"),
    )
    resolved = device_or_exit("gpu_profile", args)
    if resolved is None:
        return 2
    device, dtype = resolved
    cuda = device == "cuda"
    path = model_folder(args.rehearse, "e5-profile-")
    grid = REHEARSAL_GRID if args.rehearse else GRID
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "device": torch.cuda.get_device_name() if cuda else "cpu (rehearsal)",
        "torch": torch.__version__,
        "dtype": dtype,
        "weights": "random (intfloat/e5-base-v2 architecture)" if not args.rehearse else "random (tiny)",
        "forward": [],
        "forward_masks": "job-like: rows end at 75-100% of the padded width (job_like_batch), not all-ones",
        "profile": {},
    }

    def save() -> None:
        (out / "profile.json").write_text(json.dumps(report, indent=2))

    embedder = Embedder(path, prefix="passage", batch_size=grid["batches"][0], dtype=dtype, device=device)
    model = embedder.encoder.model
    for length in grid["lengths"]:
        for batch in grid["batches"]:
            ids_host, mask_host = job_like_batch(batch, length, embedder.encoder.pad_id)
            ids, mask = torch.from_numpy(ids_host).to(device), torch.from_numpy(mask_host).to(device)

            def forward(ids=ids, mask=mask) -> None:
                with torch.inference_mode():
                    model(input_ids=ids, attention_mask=mask)

            try:
                seconds = timed(forward, cuda, grid["reps"])
                row = {
                    "batch": batch,
                    "length": length,
                    "seconds": seconds,
                    "tokens_per_s": round(batch * length / seconds),  # padded slots, as the GPU computes them
                    "real_tokens_per_s": round(int(mask_host.sum()) / seconds),
                }
            except torch.OutOfMemoryError:
                row = {"batch": batch, "length": length, "oom": True}
            report["forward"].append(row)
            print(json.dumps(row), flush=True)
            save()
    texts = make_corpus(args.docs if not args.rehearse else 64)
    for attention in ("padded", "packed"):
        enc = Embedder(
            path, prefix="passage", batch_size=grid["batches"][-1], dtype=dtype, device=device, attention=attention
        )
        tokens = enc.tokenize(texts)
        enc.encode_tokens(tokens.slice(0, 64))  # warm-up
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=activities) as prof:
            t0 = time.perf_counter()
            enc.encode_tokens(tokens)
            if cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        summary = profile_summary(prof, cuda, wall)
        summary["tokens_per_s"] = round(int(np.asarray(tokens["n_tokens"]).sum()) / wall)
        report["profile"][attention] = summary
        print(attention, json.dumps({k: v for k, v in summary.items() if k != "top"}), flush=True)
        save()
    lines = [
        f"{report['device']}, torch {report['torch']}, {dtype}, {report['weights']}",
        "",
        "forward with job-like masks (rows end at 75-100% of the width)",
        "",
        "| batch | length | padded slots/s | real tokens/s |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['batch']} | {r['length']} | {r.get('tokens_per_s', 'OOM')} | {r.get('real_tokens_per_s', 'OOM')} |"
        for r in report["forward"]
    ]
    for attention, s in report["profile"].items():
        lines += [
            "",
            f"{attention}: {s['tokens_per_s']} tokens/s through the encode path; attention kernel(s): "
            f"{', '.join(s['attention_kernels']) or 'none named'}; device idle share: {s['idle_share']}",
        ]
    (out / "profile.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

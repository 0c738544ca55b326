"""On a CUDA machine: peak memory of one encode actor on the job's own path vs the planner's estimate.

e5-base-v2's architecture with random weights (memory does not depend on weight values), a grid
of micro-batch sizes x lengths. Each cell runs ``EncodeStage.encode_ragged`` (what the job runs)
on rows of random lengths whose longest is ``length``, so every micro-batch is padded with a real
padding mask. ``max_memory_reserved`` (what decides an OOM) and ``max_memory_allocated`` are
compared with ``estimate_peak_gpu_memory_gb`` (without the CUDA context, which the planner adds).
Writes ``memory.json`` (after every cell) and ``memory.md``.

    python jobs/gpu_memory_check.py --out $OUT/memory
    python jobs/gpu_memory_check.py --rehearse --out /tmp/memory   # on CPU: tiny grid, nothing measured
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

GRID = {"lengths": (128, 256, 512), "batches": (32, 128, 256, 512, 1024)}
REHEARSAL_GRID = {"lengths": (16, 32), "batches": (2, 4)}


def allocator_settings(torch, cuda: bool) -> dict:
    """The caching allocator's settings as this process has them (the stage sets
    PYTORCH_CUDA_ALLOC_CONF before the first CUDA call; the allocator reads it once)."""
    import os

    settings = {"PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}
    if cuda:
        settings["backend"] = torch.cuda.get_allocator_backend()
        getter = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
        settings["in_effect"] = getter() if getter is not None else "unknown (this torch cannot say)"
    return settings


def main() -> int:
    import numpy as np
    import torch

    from e5tools.device_scripts import device_or_exit, model_folder, parse_args, ragged_rows
    from pipeline.planning.plan import estimate_peak_gpu_memory_gb
    from pipeline.stages.encode import EncodeStage
    from pipeline.stages.model import ModelInfo, ModelSource

    args = parse_args("gpu_memory_check", __doc__.splitlines()[0], "memory-check")
    resolved = device_or_exit("gpu_memory_check", args)
    if resolved is None:
        return 2
    device, dtype = resolved
    cuda = device == "cuda"
    path = model_folder(args.rehearse, "e5-memory-")
    info = ModelInfo.from_config(path, json.loads(Path(path, "config.json").read_text()))
    stage = EncodeStage(model=ModelSource(name_or_path=path), batch_size=1, dtype=dtype, device=device)
    stage.setup()
    grid = REHEARSAL_GRID if args.rehearse else GRID
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "device": torch.cuda.get_device_name() if cuda else "cpu (rehearsal: nothing measured)",
        "torch": torch.__version__,
        "dtype": dtype,
        "weights": "random (architecture only)",
        "note": "estimate excludes the CUDA context (the planner adds cuda_context_gb); reserved decides an OOM",
        "allocator": allocator_settings(torch, cuda),
        "rows": [],
    }
    for length in grid["lengths"]:
        for batch in grid["batches"]:
            values, offsets = ragged_rows(batch, length, seed=batch * 1000 + length)
            stage.batch_size = batch
            row = {"batch": batch, "length": length, "reserved_gb": None, "allocated_gb": None}
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                stage.encode_ragged(values, offsets, rows=np.arange(batch))
                if cuda:
                    torch.cuda.synchronize()
                    row["reserved_gb"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
                    row["allocated_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            except torch.OutOfMemoryError:
                row["oom"] = True
            row["oom_splits"] = stage.oom_splits
            estimate = estimate_peak_gpu_memory_gb(info, batch, length, dtype, context_gb=0.0)
            row["estimate_gb"] = round(estimate, 3)
            row["estimate_over_reserved"] = round(estimate / row["reserved_gb"], 3) if row["reserved_gb"] else None
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
            (out / "memory.json").write_text(json.dumps(report, indent=2))
    lines = [
        "| batch | length | reserved GB | allocated GB | estimate GB | estimate/reserved | OOM splits |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['batch']} | {r['length']} | {r['reserved_gb']} | {r['allocated_gb']} | {r['estimate_gb']} "
        f"| {r['estimate_over_reserved']} | {r['oom_splits']} |"
        for r in report["rows"]
    ]
    (out / "memory.md").write_text(
        f"{report['device']}, torch {report['torch']}, {dtype}\n\n" + "\n".join(lines) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

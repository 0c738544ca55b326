"""On a CUDA machine: real peak memory of one encode actor vs the planner's estimate.

e5-base-v2's architecture with random weights (memory does not depend on weight values),
bf16, a grid of batch sizes and padded lengths. Writes a JSON + Markdown table.

    python jobs/gpu_memory_check.py --out $OUT/memory
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
import tempfile
from pathlib import Path


def main() -> int:
    import torch

    from e5tools.random_model import write_random_e5_base
    from pipeline.planning.plan import estimate_peak_gpu_memory_gb
    from pipeline.stages.encode import EncodeStage
    from pipeline.stages.model import KNOWN_SHAPES, ModelSource

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="memory-check")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.stderr.write("gpu_memory_check: no CUDA device here; nothing measured\n")
        return 2
    path = write_random_e5_base(tempfile.mkdtemp(prefix="e5-base-random-"))
    stage = EncodeStage(model=ModelSource(name_or_path=path), batch_size=1, dtype=args.dtype, device="cuda")
    info = KNOWN_SHAPES["intfloat/e5-base-v2"]
    rows = []
    for length in (128, 256, 512):
        for batch in (32, 128, 256, 512, 1024):
            ids = torch.randint(1000, 30000, (batch, length)).numpy()
            mask = torch.ones(batch, length, dtype=torch.int64).numpy()
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            try:
                stage._forward(ids, mask)
                torch.cuda.synchronize()
                measured = torch.cuda.max_memory_allocated() / 2**30
            except torch.OutOfMemoryError:
                measured = None
            estimate = estimate_peak_gpu_memory_gb(info, batch, length, args.dtype, context_gb=0.0)
            rows.append(
                {
                    "batch": batch,
                    "length": length,
                    "measured_gb": measured,
                    "estimate_gb": round(estimate, 3),
                    "estimate_over_measured": round(estimate / measured, 3) if measured else None,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "note": "max_memory_allocated (excludes the CUDA context, which the planner adds as cuda_context_gb)",
        "rows": rows,
    }
    (out / "memory.json").write_text(json.dumps(report, indent=2))
    lines = ["| batch | length | measured GB | estimate GB | estimate/measured |", "|---:|---:|---:|---:|---:|"]
    lines += [
        f"| {r['batch']} | {r['length']} "
        f"| {r['measured_gb'] if r['measured_gb'] is None else round(r['measured_gb'], 3)} "
        f"| {r['estimate_gb']} | {r['estimate_over_measured']} |"
        for r in rows
    ]
    (out / "memory.md").write_text(
        f"{report['device']}, torch {report['torch']}, {args.dtype}\n\n" + "\n".join(lines) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

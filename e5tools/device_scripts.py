"""What the GPU scripts in ``jobs/`` share: their command line, the CUDA check, the model they time."""

from __future__ import annotations

import argparse
import sys
import tempfile


def parse_args(name: str, description: str, default_out: str, add=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=name, description=description)
    parser.add_argument("--out", default=default_out)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--rehearse", action="store_true", help="CPU, a tiny random model and grid")
    if add is not None:
        add(parser)
    return parser.parse_args()


def own_cuda_process() -> None:
    """A script that encodes in its own process on a GPU owns that process's settings: the encode
    stage's (``EncodeStage.needs.gpu_process_env``, which the job's backend gives its GPU actors), set
    before the first CUDA call, as the job's actors have them. One already set is left as it is."""
    import os

    from pipeline.stages.encode import CUDA_PROCESS_ENV

    for name, value in CUDA_PROCESS_ENV:
        os.environ.setdefault(name, value)


def device_or_exit(name: str, args: argparse.Namespace) -> tuple[str, str] | None:
    """("cuda", dtype), ("cpu", "float32") when rehearsing, or None (said on stderr) with no CUDA device."""
    own_cuda_process()
    import torch

    if torch.cuda.is_available():
        return "cuda", args.dtype
    if args.rehearse:
        return "cpu", "float32"
    sys.stderr.write(f"{name}: no CUDA device here; nothing measured (--rehearse runs it on CPU)\n")
    return None


def model_folder(rehearse: bool, prefix: str) -> str:
    """e5-base-v2's architecture with random weights, or a tiny random BERT for a CPU rehearsal."""
    from e5tools.random_model import write_random_bert, write_random_e5_base

    folder = tempfile.mkdtemp(prefix=prefix)
    return (
        write_random_bert(folder, layers=2, hidden=64, heads=4, ffn=128) if rehearse else write_random_e5_base(folder)
    )


def ragged_rows(batch: int, length: int, seed: int):
    """``batch`` rows of random lengths in [length/4, length], the first exactly ``length`` long."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(1, length // 4), length + 1, size=batch)
    lengths[0] = length
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.integers(1000, 30000, size=int(offsets[-1])).astype(np.int64)
    return values, offsets

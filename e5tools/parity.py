"""Parity that can fail: how far our embeddings are from the reference's, measured against how far
the reference's embeddings of *different* texts are from each other.

On random weights, different texts already reach cosine 0.999+ with each other (e5-base's shape:
0.9993-0.9997), so "cosine >= 0.999 against the reference" passes a position-id bug. The error here
is ``max_i ||ours_i - ref_i||`` divided by the median distance between the reference's rows for
different texts: 0 for the same numbers, about 1 for embeddings that are no closer to the right text
than to any other. ``tests/e5tools/test_parity.py`` shows seeded bugs failing it.
"""

from __future__ import annotations

import numpy as np

# parity_error at most: float32 paths (padded, packed, compiled) differ in summation order only;
# half precision against a float32 reference is looser (to calibrate on a GPU with real weights)
TOLERANCE = {"float32": 1e-3, "float16": 0.05, "bfloat16": 0.1}


def spread(ref: np.ndarray) -> float:
    """Median L2 distance between the reference's embeddings of different texts (at least 2 rows)."""
    ref = np.asarray(ref, dtype=np.float64)
    if len(ref) < 2:
        raise ValueError("parity needs at least two different texts to measure their spread")
    sq = np.sum(ref * ref, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * ref @ ref.T, 0.0)
    i, j = np.triu_indices(len(ref), k=1)
    return float(np.median(np.sqrt(d2[i, j])))


def parity_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """``max_i ||ours_i - ref_i||`` over the reference's spread between different texts."""
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        raise ValueError(f"shapes differ: {ours.shape} vs {ref.shape}")
    return float(np.linalg.norm(ours - ref, axis=1).max() / spread(ref))

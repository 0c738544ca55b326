"""``verify`` on a cluster: the sampled rows recomputed as Ray tasks (CPU, or a GPU each where the
cluster has them), with progress and a time bound; the driver merges the parts' reports."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.errors import JobError
from pipeline.ledger.manifest import Manifest
from pipeline.verify.vectors import Sampled, VectorReport, recompute

logger = logging.getLogger(__name__)

ROWS_PER_TASK = 256


def _part(manifest_json: bytes, sampled: list[Sampled], model: str, revision: str | None, protocol: str,
          storage_options: dict[str, Any], threshold: float | None) -> VectorReport:  # fmt: skip
    """One task: the recorded model pinned on this worker, its rows recomputed."""
    import json

    from pipeline.stages.model import ModelSource

    manifest = Manifest(**json.loads(manifest_json))
    pinned, digest = ModelSource(name_or_path=model, revision=revision, storage_options=storage_options).pinned()
    recorded = manifest.metadata.get("model_sha")
    if recorded and digest != recorded:
        raise JobError(f"this worker's model {model} is {digest}, not the recorded {recorded}")
    return recompute(manifest, sampled, model_folder=pinned.local_path(), protocol=protocol,
                     storage_options=storage_options, threshold=threshold)  # fmt: skip


def recompute_on_cluster(
    address: str,
    manifest: Manifest,
    sampled: Sequence[Sampled],
    *,
    model: str,
    revision: str | None,
    protocol: str,
    storage_options: Mapping[str, Any],
    threshold: float | None,
    max_seconds: float,
) -> VectorReport:
    """``sampled`` in parts of ``ROWS_PER_TASK`` rows, one Ray task each; exit 1 past ``max_seconds``."""
    import ray

    owned = not ray.is_initialized()  # a caller's own connection is left as it was
    if owned:
        ray.init(address=address, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(_part)
        parts = [list(sampled[i : i + ROWS_PER_TASK]) for i in range(0, len(sampled), ROWS_PER_TASK)]
        pending = [
            task.remote(manifest.to_json(), part, model, revision, protocol, dict(storage_options), threshold)
            for part in parts
        ]
        done: list[VectorReport] = []
        deadline = time.monotonic() + max_seconds
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise JobError(
                    f"verify: {len(done)} of {len(parts)} parts recomputed within --max-seconds {max_seconds:g}; "
                    "run it again with a larger bound or a smaller --sample"
                )
            done.append(ray.get(ready[0]))
            logger.info("verify: %d of %d parts recomputed", len(done), len(parts))
    finally:
        if owned:
            ray.shutdown()
    return merge(done)


def merge(parts: Sequence[VectorReport]) -> VectorReport:
    """One report from the parts' (the spread: the median of theirs)."""
    out = VectorReport(threshold=parts[0].threshold if parts else 0.0)
    for p in parts:
        out.sampled += p.sampled
        out.checked += p.checked
        out.changed_since += p.changed_since
        out.cosines += p.cosines
        out.defects += p.defects
    spreads = [p.spread for p in parts if p.spread]
    errors = [p.worst_spread_error for p in parts if p.worst_spread_error is not None]
    out.spread = float(np.median(spreads)) if spreads else None
    out.worst_spread_error = max(errors) if errors else None
    return out

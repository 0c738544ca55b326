"""The duplicate-id count as a Ray Data hash aggregation over the ``id`` column only (large outputs)."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.io.storage import Storage
from pipeline.ledger.duplicates import EXAMPLES, DuplicateReport


def duplicate_ids_on_cluster(storage: Storage, files: Sequence[str], chunked: bool = False) -> DuplicateReport:
    """In chunked outputs only each record's first window (``chunk == 0``) counts."""
    import ray
    from ray.data.expressions import col

    ids = ray.data.read_parquet(
        list(files), filesystem=storage.arrow_filesystem(), columns=["id", "chunk"] if chunked else ["id"]
    )
    if chunked:
        ids = ids.filter(expr=col("chunk") == 0).select_columns(["id"])
    counts = ids.groupby("id").count()
    repeated = counts.filter(expr=col("count()") > 1).materialize()
    return DuplicateReport(repeated.count(), [r["id"] for r in repeated.take(EXAMPLES)])

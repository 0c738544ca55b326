"""The duplicate-id count as a Ray Data hash aggregation over the ``id`` column only (large outputs)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pipeline.io.layout import TRUNCATE, Layout
from pipeline.io.storage import Storage
from pipeline.ledger.duplicates import EXAMPLES, DuplicateReport

IDS_PER_PARTITION = 5_000_000  # one hash partition's table: ~5M ids (a few hundred MB), at most MAX_PARTITIONS
MAX_PARTITIONS = 200


def duplicate_ids_on_cluster(
    storage: Storage, files: Sequence[str], layout: Layout = TRUNCATE, rows: int | None = None
) -> DuplicateReport:
    """Only the row that stands for a record counts (``layout.first_row``: in windowed outputs its
    first window). The hash
    aggregation has one partition per ``IDS_PER_PARTITION`` of the output's ``rows`` (a small output
    does not start Ray Data's default 200 aggregators)."""
    import ray
    from ray.data.expressions import col

    # the projection is pushed down into the read (Ray Data's optimizer): no vector is read
    ids = ray.data.read_parquet(list(files), filesystem=storage.arrow_filesystem())
    if layout.first_row is not None:
        column, value = layout.first_row
        ids = ids.select_columns(["id", column]).filter(expr=col(column) == value)
    ids = ids.select_columns(["id"])
    partitions = None if rows is None else max(1, min(MAX_PARTITIONS, math.ceil(rows / IDS_PER_PARTITION)))
    counts = ids.groupby("id", num_partitions=partitions).count()
    repeated = counts.filter(expr=col("count()") > 1).materialize()
    return DuplicateReport(repeated.count(), [r["id"] for r in repeated.take(EXAMPLES)])

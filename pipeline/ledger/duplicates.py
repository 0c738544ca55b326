"""Duplicate ids in an output: counted and reported, never silently dropped.

Behaviour: two input records with the same id are both embedded (they are
different rows: ``source``/``row`` tell them apart) and the run reports how many
ids occur more than once, with examples, in its summary and ``_manifest.json``.

Up to ``DRIVER_CHECK_MAX_ROWS`` rows the check streams the ``id`` column and
compares 64-bit hashes on the driver (milliseconds); above that the runner passes the
backend's Ray Data hash aggregation (reading only the ``id`` column) as ``on_cluster``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.dataset as pads

from pipeline.io.layout import TRUNCATE, Layout
from pipeline.io.storage import Storage

logger = logging.getLogger(__name__)

DRIVER_CHECK_MAX_ROWS = 20_000_000
EXAMPLES = 10


@dataclass(frozen=True)
class DuplicateReport:
    duplicate_ids: int
    examples: list[str] = field(default_factory=list)


def find_duplicate_ids(
    storage: Storage,
    files: Sequence[str],
    total_rows: int,
    on_cluster: Callable[[Storage, Sequence[str], Layout, int], DuplicateReport] | None = None,
    *,
    layout: Layout = TRUNCATE,
) -> DuplicateReport:
    """Count ids that occur more than once; above DRIVER_CHECK_MAX_ROWS with ``on_cluster``
    (the backend's aggregation, ``pipeline.backend.duplicates``). In ``chunked`` outputs a
    record's windows share its id: only the row that stands for a record (``layout.first_row``) counts."""
    if not files:
        return DuplicateReport(0)
    if total_rows <= DRIVER_CHECK_MAX_ROWS or on_cluster is None:
        return on_driver(storage, files, layout)
    return on_cluster(storage, files, layout, total_rows)


def on_driver(storage: Storage, files: Sequence[str], layout: Layout) -> DuplicateReport:
    """The check in this process: 8 bytes kept per id, files read one at a time."""
    import pandas as pd

    dataset = pads.dataset(list(files), filesystem=storage.arrow_filesystem(), format="parquet")
    where = None if layout.first_row is None else pads.field(layout.first_row[0]) == layout.first_row[1]
    # one file at a time, 8 bytes per id kept: memory grows by the hashes only (16 MB per 2M ids)
    scan = dict(columns=["id"], filter=where, batch_size=1 << 16, batch_readahead=0, fragment_readahead=1)
    hashes = [
        pd.util.hash_array(batch.column(0).to_numpy(zero_copy_only=False)) for batch in dataset.to_batches(**scan)
    ]
    if not hashes:
        return DuplicateReport(0)
    flat = np.concatenate(hashes)
    del hashes
    flat.sort()
    repeated = np.unique(flat[1:][flat[1:] == flat[:-1]])
    del flat
    if not len(repeated):
        return DuplicateReport(0)
    examples: list[str] = []
    wanted = set(repeated[:EXAMPLES].tolist())
    for batch in dataset.to_batches(**scan):
        ids = batch.column(0).to_numpy(zero_copy_only=False)
        for h, i in zip(pd.util.hash_array(ids), ids):
            if h in wanted and i not in examples:
                examples.append(str(i))
    return DuplicateReport(int(len(repeated)), examples[:EXAMPLES])


def report_duplicate_ids(
    storage: Storage,
    totals: Any,
    on_cluster: Callable[[Storage, Sequence[str], Layout, int], DuplicateReport] | None,
    *,
    layout: Layout,
) -> DuplicateReport:
    """``find_duplicate_ids`` over the output's data files (``totals``), said in the log when any."""
    from pipeline.io.storage import escape_controls

    duplicates = find_duplicate_ids(
        storage, totals.data_paths, totals.counters.rows_written, on_cluster=on_cluster, layout=layout
    )
    if duplicates.duplicate_ids:
        logger.warning(
            "%d id(s) occur more than once in %s (all rows kept), e.g. %s",
            duplicates.duplicate_ids,
            storage.describe(),
            ", ".join(escape_controls(e) for e in duplicates.examples[:3]),
        )
    return duplicates

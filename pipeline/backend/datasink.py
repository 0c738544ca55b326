"""The Ray Data datasink: write tasks call the pure ``pipeline.io.sink.write_rows`` and return
their counters; nothing but counters reaches the driver."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink
from ray.data.datasource.datasink import WriteResult

from pipeline.backend.progress import Telemetry
from pipeline.io.counters import Counters
from pipeline.io.sink import write_rows
from pipeline.io.storage import Storage
from pipeline.ledger.lease import LeaseFence


class EmbeddingDatasink(Datasink[dict]):
    def __init__(
        self,
        *,
        output_uri: str,
        storage_options: Mapping[str, Any],
        metadata: Mapping[str, Any],
        dim: int,
        output_dtype: str,
        rows_per_file: int,
        versions: Mapping[str, str],
        fence: LeaseFence | None = None,
        telemetry: Telemetry | None = None,
        outcome: str = "embedded",  # or "reused": rows carried over, counted apart
        name_salt: str = "",  # the output's (a published output after --overwrite)
    ):
        self.name_salt = name_salt
        self.outcome = outcome
        self.telemetry = telemetry
        self.fence = fence  # a write task of a run that lost its lease writes nothing
        self.output_uri = output_uri
        self.storage_options = dict(storage_options)
        self.metadata = dict(metadata)
        self.dim = dim
        self.output_dtype = output_dtype
        self.rows_per_file = rows_per_file
        self.versions = dict(versions)  # source shard -> version key, for each file's footer
        self.totals = Counters()

    def get_name(self) -> str:
        return "WriteEmbeddings"

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks: Iterable[Block], ctx) -> dict:
        started = time.time()
        tables = [t for t in (BlockAccessor.for_block(b).to_arrow() for b in blocks) if t.num_rows]
        if not tables:
            return Counters().to_dict()
        written = write_rows(
            Storage(self.output_uri, self.storage_options),
            pa.concat_tables(tables),
            metadata=self.metadata,
            dim=self.dim,
            output_dtype=self.output_dtype,
            rows_per_file=self.rows_per_file,
            versions=self.versions,
            fence=self.fence.check if self.fence else None,
            carried=self.outcome == "reused",
            name_salt=self.name_salt,
        )
        if self.telemetry is not None:
            self.telemetry.written(written, self.outcome)
            self.telemetry.worked("write", started, time.time())
        return written.to_dict()

    def on_write_complete(self, write_result: WriteResult[dict]) -> None:
        self.totals = Counters.total(Counters.from_dict(r) for r in write_result.write_returns)

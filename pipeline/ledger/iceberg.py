"""Iceberg as a ``Publisher`` (``pipeline.ledger.publisher``): each proven run one snapshot of the
table (``pipeline.ledger.table.publish`` does the commit, the expiry and the deletions)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.errors import UsageError
from pipeline.io.storage import Storage
from pipeline.ledger.manifest import Manifest
from pipeline.ledger.table import EMBEDDED, Published, publish
from pipeline.output_settings import TableSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IcebergPublisher:
    settings: TableSettings
    schema: pa.Schema  # the output's data files' schema (the table's)
    name: str = "iceberg"

    @classmethod
    def for_job(cls, config: Any, info: Any) -> "IcebergPublisher | None":
        """The job's publisher (None without ``--iceberg-table``): the table holds the output's schema."""
        settings = config.table_settings()
        if settings is None:
            return None
        return cls(settings, config.layout.output_schema(info.hidden_size, config.output_dtype))

    @property
    def catalog(self) -> str:
        return self.settings.catalog or EMBEDDED

    def check(self, manifest: Manifest, output: str) -> None:
        """One output publishes to one table (its retired files are kept for that table's snapshots)."""
        was_table, was_catalog = manifest.published.get("table"), manifest.published.get("catalog")
        if not manifest.published or (was_table, was_catalog) == (self.settings.table, self.catalog):
            return
        flags = [f"--iceberg-table {was_table}"] if was_table != self.settings.table else []
        if was_catalog != self.catalog:
            flags.append(
                "no --iceberg-catalog (its embedded catalog)"
                if was_catalog == EMBEDDED
                else f"--iceberg-catalog {was_catalog}"
            )
        raise UsageError(
            f"{output} is published to table {was_table} in catalog {was_catalog}, not table {self.settings.table} "
            f"in catalog {self.catalog}; one output publishes to one table (its retired files are kept for that "
            f"table's snapshots): rerun with {' and '.join(flags)}, or embed into another --output"
        )

    def publish(
        self,
        storage: Storage,
        manifest: Manifest,
        metadata: Mapping[str, Any],
        data_paths: Sequence[str],
        *,
        retired: Sequence[str],
        committed_by: str,
        fence: Callable[[], None],
    ) -> Published:
        known = (manifest.published.get("table"), manifest.published.get("catalog")) == (
            self.settings.table,
            self.catalog,
        )
        return publish(
            self.settings,
            storage,
            metadata,
            self.schema,
            data_paths,
            {**manifest.snapshot_summary(committed_by), "model-sha": metadata.get("model_sha")},
            retired=retired,
            known=known,
            fence=fence,
        )

    def line(self, published: Published) -> str:
        what = (
            f"snapshot {published.snapshot_id}"
            if published.committed
            else f"already at snapshot {published.snapshot_id}"
        )
        return f"table {published.table} ({published.catalog}): {what}, {published.files} file(s)"

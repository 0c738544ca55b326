"""``e5-embed verify``: are these the vectors the model card would give, for every input record,
exactly once? Answered from the output's files and the inputs, without trusting the code that
wrote them, and without writing anything (no lease, no ``_SUCCESS`` change, no catalog put back):
it can run while readers read and after the run's cluster is gone.

Exit 0: everything holds; 2: a defect (named), or a usage error (one line, its remedy); 1: it could
not finish (the store or the cluster failing for a moment: run it again).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import E5EmbedError, UsageError, step_failed
from pipeline.io.layout import Layout
from pipeline.io.storage import Storage
from pipeline.ledger.manifest import Manifest, is_complete
from pipeline.ledger.table import CATALOG_DB, CATALOG_DIR, EMBEDDED
from pipeline.stages.model import ModelSource
from pipeline.verify import coverage, vectors

logger = logging.getLogger(__name__)

DEFAULT_SAMPLE = 100


@dataclass(frozen=True, kw_only=True)
class VerifyRequest:
    output: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    iceberg_table: str | None = None
    iceberg_catalog: str | None = None  # None: the output's embedded catalog
    snapshot: int | None = None  # a table's snapshot (default: its current one)
    sample: int | None = None  # None: DEFAULT_SAMPLE, or every row of a smaller output
    seed: int = 0
    threshold: float | None = None  # default from the output's compute dtype (vectors.THRESHOLDS)
    model: str | None = None  # a local copy of the recorded model (checked against the recorded digest)
    ray_address: str | None = None  # recompute on that cluster's workers (large samples)
    max_seconds: float = 3600.0  # the recomputation's bound on a cluster

    def __post_init__(self) -> None:
        if self.sample is not None and self.sample < 0:
            raise UsageError(f"--sample must be >= 0, not {self.sample}")
        if self.snapshot is not None and self.iceberg_table is None:
            raise UsageError("--snapshot names a snapshot of --iceberg-table: pass the table too")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise UsageError(f"--threshold is a cosine in (0, 1], not {self.threshold}")


@dataclass
class Audit:
    output: str
    coverage: coverage.CoverageReport
    vectors: vectors.VectorReport
    snapshot: int | None = None
    seconds: float = 0.0

    @property
    def defects(self) -> list[str]:
        return self.coverage.defects + self.vectors.defects

    @property
    def exit_code(self) -> int:
        return 2 if self.defects else 0

    def line(self) -> str:
        c, v = self.coverage, self.vectors.figures()
        cos = "" if v["min_cosine"] is None else f", min cosine {v['min_cosine']:.6f} (threshold {v['threshold']})"
        changed = f", {v['changed_since_run']} changed since the run" if v["changed_since_run"] else ""
        head = "verified" if not self.defects else f"{len(self.defects)} defect(s)"
        return (
            f"e5-embed verify: {head}: {self.output}"
            + (f" (snapshot {self.snapshot})" if self.snapshot is not None else "")
            + f": {c.rows_embedded:,} rows embedded + {c.rows_rejected:,} rejected of {c.rows_expected:,} listed "
            f"in {c.files:,} file(s); {v['checked']} of {v['sampled']} sampled vectors recomputed{cos}{changed}"
        )

    def to_dict(self) -> dict[str, Any]:
        c = self.coverage
        return {
            "output": self.output,
            "snapshot": self.snapshot,
            "ok": not self.defects,
            "exit_code": self.exit_code,
            "coverage": {
                "files": c.files,
                "rows_listed": c.rows_expected,
                "rows_embedded": c.rows_embedded,
                "rows_rejected": c.rows_rejected,
            },
            "vectors": self.vectors.figures(),
            "defects": self.defects,
            "seconds": round(self.seconds, 2),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def verify(request: VerifyRequest, on_cluster: Callable[..., vectors.VectorReport] | None = None) -> Audit:
    """The audit (see the module's doc); ``on_cluster``: the backend's recomputation on a Ray cluster
    (``pipeline.backend.verify_tasks.recompute_on_cluster``), used with ``ray_address``."""
    started = time.monotonic()
    storage = Storage(request.output, request.storage_options)
    try:
        return _verify(request, storage, on_cluster, started)
    except E5EmbedError:
        raise
    except Exception as e:  # the store or the network: exit 1 when a retry may finish it, else 2
        raise step_failed(f"verify could not read {request.output}", e) from e


def _verify(request: VerifyRequest, storage: Storage, on_cluster, started: float) -> Audit:
    manifest = Manifest.load(storage)
    if manifest is None:
        raise UsageError(f"{request.output} is not an e5-embed output (no _manifest.json): pass the --output of a run")
    if not (manifest.complete and is_complete(storage)):
        raise UsageError(
            f"{request.output} is not complete (no _SUCCESS): finish it with `e5-embed run` on the same --input and "
            f"--output, then verify"
        )
    layout = Layout.of_metadata(manifest.metadata)
    snapshot, table_files = _table_files(request, storage)
    covered = coverage.check(storage, manifest, table_files=table_files, layout=layout)
    held = sum(f.rows for f in covered.data_files)
    n = min(DEFAULT_SAMPLE, held) if request.sample is None else request.sample
    if n > held:
        raise UsageError(
            f"--sample {request.sample} is more than the {held:,} rows the output holds: pass --sample {held}"
        )
    model_folder = _model_folder(request, manifest)
    sampled = vectors.draw(storage, covered.data_files, n, request.seed, layout)
    protocol = _protocol(manifest)
    if request.ray_address and sampled:
        if on_cluster is None:
            raise UsageError("--ray-address needs the Ray backend (pipeline.backend.verify_tasks)")
        checked = on_cluster(
            request.ray_address, manifest, sampled, model=request.model or manifest.metadata.get("model"),
            revision=_revision(manifest), protocol=protocol, storage_options=request.storage_options,
            threshold=request.threshold, max_seconds=request.max_seconds,
        )  # fmt: skip
    else:
        checked = vectors.recompute(
            manifest, sampled, model_folder=model_folder, protocol=protocol,
            storage_options=request.storage_options, threshold=request.threshold,
        )  # fmt: skip
    return Audit(request.output, covered, checked, snapshot, time.monotonic() - started)


def _protocol(manifest: Manifest) -> str:
    inputs = manifest.metadata.get("inputs") or manifest.inputs or [""]
    first = str(inputs[0])
    return first.split("://", 1)[0] if "://" in first else "file"


def _revision(manifest: Manifest) -> str | None:
    sha = str(manifest.metadata.get("model_sha") or "")
    return sha.removeprefix("git:") if sha.startswith("git:") else manifest.metadata.get("revision")


def _model_folder(request: VerifyRequest, manifest: Manifest) -> str:
    """The recorded model, pinned by its recorded digest: the Hub commit, or a folder's bytes (a
    local copy given with ``--model`` must hash to the digest the output recorded)."""
    recorded = manifest.metadata.get("model_sha")
    name = request.model or manifest.metadata.get("model")
    source = ModelSource(name_or_path=name, revision=None if request.model else _revision(manifest),
                         storage_options=request.storage_options)  # fmt: skip
    pinned, digest = source.pinned()
    if recorded and digest != recorded:
        raise UsageError(
            f"model {name} is {digest}, but {request.output} was made with {recorded}: pass --model with a copy of "
            "the model it was made with"
        )
    return pinned.local_path()


def _table_files(request: VerifyRequest, storage: Storage) -> tuple[int | None, set[str] | None]:
    """A table snapshot's data files (storage paths), read without changing the catalog."""
    if request.iceberg_table is None:
        return None, None
    from pyiceberg.catalog import load_catalog
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.exceptions import NoSuchTableError

    with tempfile.TemporaryDirectory(prefix="e5-verify-catalog-") as tmp:
        if request.iceberg_catalog is None:  # a copy of the embedded catalog: the original is never written
            local = os.path.join(tmp, CATALOG_DB)
            try:
                storage.download(storage.join(CATALOG_DIR, CATALOG_DB), local)
            except FileNotFoundError as e:
                raise UsageError(
                    f"{request.output} has no table (no {CATALOG_DIR}/{CATALOG_DB}): leave out --iceberg-table"
                ) from e
            catalog = SqlCatalog(EMBEDDED, uri=f"sqlite:///{local}", warehouse=storage.url(storage.join(CATALOG_DIR)))
        else:
            from pyiceberg.utils.config import Config

            catalog = load_catalog(
                request.iceberg_catalog, **(Config().get_catalog_config(request.iceberg_catalog) or {})
            )
        try:
            table = catalog.load_table(request.iceberg_table)
        except NoSuchTableError as e:
            raise UsageError(
                f"table {request.iceberg_table} does not exist in its catalog: check --iceberg-table"
            ) from e
        snapshot = table.current_snapshot() if request.snapshot is None else table.snapshot_by_id(request.snapshot)
        if snapshot is None:
            known = ", ".join(str(s.snapshot_id) for s in table.snapshots()[-5:]) or "none"
            raise UsageError(
                f"snapshot {request.snapshot} does not exist in table {request.iceberg_table} (its latest: {known}): "
                "pass one of them to --snapshot, or leave it out for the current one"
            )
        files = {_path(task.file.file_path) for task in table.scan(snapshot_id=snapshot.snapshot_id).plan_files()}
        if request.iceberg_catalog is None:
            catalog.engine.dispose()
    return snapshot.snapshot_id, files


def _path(url: str) -> str:
    return url.split("://", 1)[1] if "://" in url else url

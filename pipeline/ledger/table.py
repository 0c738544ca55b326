"""A proven output published to an Apache Iceberg table: one snapshot per run, the files in place.

Once ``_SUCCESS`` is written, :func:`publish` makes the table's current snapshot describe the
output as it now is, in **one commit**: the data files the output holds and the table does not are
added (registered in place: their Parquet footers are read for statistics, no vector is copied);
the files the table holds and the output no longer does (``--update``'s stale files,
``--overwrite``'s old ones) are removed in the same commit. A first run is an append, an
incremental run an append of its new files, ``--update`` one overwrite (delete + add), and a
rerun when nothing changed commits nothing. So a kill anywhere around the commit, then a rerun,
ends with the files published exactly once: the diff against the table is computed again.

Readers pinned to an earlier snapshot keep reading its files: a published output *retires* the
data files it no longer holds (``Manifest.retired_files``: left in place, never read by the job
again) and deletes them only once no kept snapshot references them — after each publish, snapshots
beyond ``keep_snapshots`` expire and the retired files only they read are deleted.

Catalogs follow pyiceberg's conventions (``.pyiceberg.yaml``, ``PYICEBERG_CATALOG__<NAME>__*``):
``catalog=None`` is an embedded SQL catalog on SQLite whose database lives in the output
(``_iceberg/catalog.db``, copied down, committed and put back atomically under the run's lease)
with the table's metadata beside it (``_iceberg/``), so it needs no server, locally or on S3. A
shared catalog (SQL on PostgreSQL, REST, Glue, ...) is named and configured the ecosystem's way.

Types: ``embedding`` is ``fixed_size_list<float32>[dim]`` in the files; Iceberg has a list type
only, so the table reads it as ``list<float>`` and records the width in its properties
(``e5-embed.embedding-dim``; cast back with ``pa.list_(pa.float32(), dim)``). ``text_hash`` is
``fixed[16]``. float16 vectors have no Iceberg type and are refused before the run (``config``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from pipeline.errors import E5EmbedError, UsageError, step_failed
from pipeline.io.storage import Storage, normalize_uri, scrub
from pipeline.ledger.identity import VECTOR_KEYS, identity
from pipeline.output_settings import TableSettings

logger = logging.getLogger(__name__)

CATALOG_DIR = "_iceberg"
CATALOG_DB = "catalog.db"
EMBEDDED = "e5_embed"  # the embedded catalog's name (a reader opens its database under this name)
PREFIX = "e5-embed."
COMMIT_ATTEMPTS = 4  # a commit that lost the catalog's optimistic-concurrency race is redone this often
# pyiceberg redoes a lost commit itself by default, on the table as the winner left it: a rival's files
# would then ride into this run's snapshot. The job's table has it off, so a lost race comes back here,
# where the change is computed again and another writer's files are refused by name.
NO_LIBRARY_RETRY = {"commit.retry.num-retries": "0"}


@dataclass(frozen=True)
class Published:
    """What one publish did: the table, its catalog, the snapshot that now describes the output."""

    table: str
    catalog: str
    snapshot_id: int | None
    metadata_location: str
    files: int
    added: int
    removed: int
    committed: bool  # False: the table already described the output (nothing to commit)
    expired_snapshots: int = 0
    deleted_files: tuple[str, ...] = ()  # retired files no kept snapshot reads any more: deleted

    def record(self) -> dict[str, Any]:
        """The manifest's ``published`` entry."""
        out = asdict(self)
        out.pop("deleted_files")
        return out


def settings_digest(metadata: Mapping[str, Any]) -> str:
    """One digest of what makes the output's vectors what they are (the vector identity)."""
    values = {k: identity(metadata, k) for k in VECTOR_KEYS}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_io_properties(storage: Storage) -> dict[str, str]:
    """pyiceberg FileIO properties for the output's store (the embedded catalog's; a shared catalog
    carries its own in its configuration)."""
    if storage.protocol not in ("s3", "s3a"):
        return {}
    options = dict(storage.storage_options)
    client = options.get("client_kwargs") or {}
    endpoint = (
        options.get("endpoint_url")
        or client.get("endpoint_url")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    props = {"s3.region": str(client.get("region_name") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")}
    if endpoint:
        props["s3.endpoint"] = str(endpoint)
    if options.get("key") and options.get("secret"):
        props["s3.access-key-id"], props["s3.secret-access-key"] = str(options["key"]), str(options["secret"])
    return props


@contextmanager
def open_catalog(settings: TableSettings, storage: Storage, fence=lambda: None) -> Iterator[Any]:
    """The catalog to publish through. The embedded one is copied from the output, and put back
    (atomically, behind the lease fence) only when the block ends without an error."""
    try:
        from pyiceberg.catalog import load_catalog
        from pyiceberg.catalog.sql import SqlCatalog
    except ImportError as e:  # an extra, not a core dependency
        raise UsageError(
            f"--iceberg-table needs pyiceberg with its SQL catalog: pip install 'pyiceberg[sql-sqlite]' ({e})"
        ) from e
    if settings.catalog is not None:
        from pyiceberg.utils.config import Config

        try:  # read .pyiceberg.yaml and PYICEBERG_CATALOG__* now (pyiceberg reads them once, at import)
            catalog = load_catalog(settings.catalog, **(Config().get_catalog_config(settings.catalog) or {}))
        except ValueError as e:  # pyiceberg: no URI/type configured for that name
            raise UsageError(
                f"--iceberg-catalog {settings.catalog}: {e} (configure it in .pyiceberg.yaml or with "
                f"PYICEBERG_CATALOG__{settings.catalog.upper()}__* variables)"
            ) from e
        yield catalog
        return
    with tempfile.TemporaryDirectory(prefix="e5-embed-catalog-") as tmp:
        local = os.path.join(tmp, CATALOG_DB)
        remote = storage.join(CATALOG_DIR, CATALOG_DB)
        try:
            storage.download(remote, local)
        except FileNotFoundError:
            pass  # the first publish creates it

        def embedded() -> Any:
            return SqlCatalog(
                EMBEDDED,
                uri=f"sqlite:///{local}",
                warehouse=storage.url(storage.join(CATALOG_DIR)),
                **_file_io_properties(storage),
            )

        try:
            catalog = embedded()
        except Exception as e:  # not a database any more (cut short, overwritten): SQLAlchemy wraps sqlite3's error
            if not isinstance(getattr(e, "orig", None), sqlite3.DatabaseError):
                raise
            if not settings.rebuild:
                raise UsageError(
                    f"the table's embedded catalog {storage.display(remote)} is damaged ({str(e.orig)[:100]}); the "
                    f"output itself is complete. Rerun the same command with --iceberg-rebuild to register table "
                    f"{settings.table} again from the output (its snapshot history starts over)"
                ) from e
            logger.warning(
                "the embedded catalog %s is damaged (%s): --iceberg-rebuild starts it over", storage.display(remote), e
            )
            os.remove(local)
            catalog = embedded()
        yield catalog
        catalog.engine.dispose()
        with open(local, "rb") as f:
            data = f.read()
        fence()
        storage.write_bytes_atomic(remote, data)


def _arrow_kind(t: pa.DataType) -> str:
    """A type as Iceberg stores it: fixed-size lists are lists, large variants are the same type."""
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{_arrow_kind(t.value_type)}>"
    if pa.types.is_large_string(t):
        return "string"
    return str(t)


def _check_schema(table: Any, expected: pa.Schema, name: str) -> None:
    have = {f.name: _arrow_kind(f.type) for f in table.schema().as_arrow()}
    want = {f.name: _arrow_kind(f.type) for f in expected}
    if have != want:
        diffs = sorted(
            f"{k}: {have.get(k, 'missing')} (the output: {want.get(k, 'none')})"
            for k in set(have) | set(want)
            if have.get(k) != want.get(k)
        )
        raise UsageError(
            f"the schema of table {name} is not the output's ({'; '.join(diffs[:4])}), changed by hand? "
            "Publish to another --iceberg-table, or restore its schema"
        )


def _table_properties(storage: Storage, metadata: Mapping[str, Any], expected: pa.Schema) -> dict[str, str]:
    embedding = expected.field("embedding").type
    return {
        PREFIX + "output": normalize_uri(storage.uri),
        PREFIX + "model": str(metadata.get("model")),
        PREFIX + "model-sha": str(metadata.get("model_sha")),
        PREFIX + "settings-digest": settings_digest(metadata),
        PREFIX + "settings": json.dumps({k: identity(metadata, k) for k in VECTOR_KEYS}, sort_keys=True, default=str),
        PREFIX + "embedding-dim": str(embedding.list_size),
        PREFIX + "embedding-cast": f"pa.list_(pa.float32(), {embedding.list_size})",
        "write.parquet.compression-codec": "zstd",
        **NO_LIBRARY_RETRY,
    }


def _load_or_create(
    catalog: Any,
    settings: TableSettings,
    storage: Storage,
    metadata: Mapping[str, Any],
    expected: pa.Schema,
    *,
    known: bool,
) -> Any:
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.table import TableProperties

    namespace = settings.table.rsplit(".", 1)[0]
    try:
        table = catalog.load_table(settings.table)
    except (FileNotFoundError, ValueError) as e:  # the catalog names metadata that is gone or not Iceberg's
        where = f"table {settings.table} in catalog {settings.catalog or EMBEDDED}"
        if not settings.rebuild:
            raise UsageError(
                f"{where} cannot be read: {type(e).__name__}: {str(e)[:200]} (its metadata deleted or damaged?); the "
                f"output itself is complete. Rerun the same command with --iceberg-rebuild to register the table "
                "again from the output (its snapshot history starts over)"
            ) from e
        logger.warning("%s cannot be read (%s): --iceberg-rebuild registers it again", where, e)
        catalog.drop_table(settings.table)  # the catalog's entry only: the data files are the output's
        return _load_or_create(catalog, settings, storage, metadata, expected, known=False)
    except NoSuchTableError:
        if known:  # published before: dropped by hand since
            logger.warning(
                "table %s was published to before but is gone (dropped?); creating it again: its history is lost",
                settings.table,
            )
        catalog.create_namespace_if_not_exists(namespace)
        location = {}
        if settings.catalog is None:
            location = {"location": storage.url(storage.join(CATALOG_DIR, *settings.table.split(".")))}
        props = _table_properties(storage, metadata, expected)
        table = catalog.create_table(settings.table, schema=expected, properties=props, **location)
        mapping = table.schema().name_mapping.model_dump_json()  # the files carry no field ids
        with table.transaction() as tx:
            tx.set_properties(**{TableProperties.DEFAULT_NAME_MAPPING: mapping})
        return catalog.load_table(settings.table)
    props = table.properties
    output, digest = props.get(PREFIX + "output"), props.get(PREFIX + "settings-digest")
    if output != normalize_uri(storage.uri) or digest != settings_digest(metadata):
        raise UsageError(
            f"table {settings.table} publishes "
            + (f"output {output} made with settings {digest}" if output else "data e5-embed did not write")
            + f"; this run's output is {normalize_uri(storage.uri)} with settings {settings_digest(metadata)} "
            f"(model {metadata.get('model_sha')}): publish to another --iceberg-table"
        )
    _check_schema(table, expected, settings.table)
    if any(props.get(k) != v for k, v in NO_LIBRARY_RETRY.items()):  # a table of an earlier release
        with table.transaction() as tx:
            tx.set_properties(**NO_LIBRARY_RETRY)
        table = catalog.load_table(settings.table)
    return table


def _current_files(table: Any) -> dict[str, Any]:
    """The data files of the table's current snapshot, by path."""
    if table.current_snapshot() is None:
        return {}
    return {task.file.file_path: task.file for task in table.scan().plan_files()}


def _data_files(table: Any, paths: Sequence[str]) -> list[Any]:
    """Data file entries for ``paths`` (each footer read for statistics, in parallel)."""
    from pyiceberg.io.pyarrow import parquet_file_to_data_file

    def one(path: str) -> Any:
        return parquet_file_to_data_file(table.io, table.metadata, path)

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(one, paths))


def _commit(table: Any, add: list[Any], remove: list[Any], summary: Mapping[str, str]) -> None:
    with table.transaction() as tx:
        update = tx.update_snapshot(snapshot_properties=dict(summary))
        with update.overwrite() if remove else update.fast_append() as producer:
            for data_file in remove:
                producer.delete_data_file(data_file)
            for data_file in add:
                producer.append_data_file(data_file)


def _check_committed(table: Any, want: set[str], where: str) -> None:
    """The snapshot just committed holds exactly the output's files (a writer that redoes lost
    commits on its own could have carried another writer's files into it)."""
    now = set(_current_files(table))
    if now != want:
        extra, missing = sorted(now - want), sorted(want - now)
        raise UsageError(
            f"{where}: the snapshot just committed ({table.current_snapshot().snapshot_id}) is not the output: "
            f"{len(extra)} file(s) another writer added (e.g. {extra[0] if extra else '-'}), {len(missing)} of the "
            "output's missing; another writer committed to the table at the same time. Roll the table back to "
            "its previous snapshot, then publish again"
        )


def _protected(table: Any) -> set[int]:
    """Snapshots a reference holds (a reader's tag, a branch's head): Iceberg's retention keeps them."""
    return {ref.snapshot_id for ref in table.metadata.refs.values()}


def _expire(table: Any, keep: int) -> int:
    """Expire snapshots beyond the newest ``keep``, never the current one nor one a tag or branch
    holds (they stay, with their files, until their reference goes); the number expired."""
    snapshots = sorted(table.snapshots(), key=lambda s: s.timestamp_ms)
    held = _protected(table)
    current = table.current_snapshot()
    held |= set() if current is None else {current.snapshot_id}
    old = [s.snapshot_id for s in snapshots[:-keep] if s.snapshot_id not in held]
    if old:
        table.maintenance.expire_snapshots().by_ids(old).commit()
        table.refresh()
    return len(old)


def _released(table: Any, retired: Sequence[str], storage: Storage) -> list[str]:
    """The retired files no snapshot of ``table`` reads any more (deletable once ``table`` is what
    the catalog durably holds)."""
    if not retired:
        return []
    read = {
        task.file.file_path for s in table.snapshots() for task in table.scan(snapshot_id=s.snapshot_id).plan_files()
    }
    return [p for p in retired if storage.url(p) not in read]


def delete_released(storage: Storage, paths: Sequence[str], fence=lambda: None) -> list[str]:
    """Delete retired files no saved snapshot reads. Runs only after the catalog that no longer
    needs them is saved (embedded) or acknowledged (shared); idempotent, so a kill part-way is
    finished by the next publish (the manifest keeps them retired until their deletion is saved)."""
    deleted = []
    for path in paths:
        fence()
        try:
            storage.delete(path)
        except Exception as e:  # the table is saved and right; the next publish deletes it
            logger.warning("could not delete the released file %s (the next publish tries again): %s", path, e)
            continue
        deleted.append(path)
    return deleted


def publish(
    settings: TableSettings,
    storage: Storage,
    metadata: Mapping[str, Any],
    expected: pa.Schema,
    data_paths: Sequence[str],
    summary: Mapping[str, Any],
    *,
    retired: Sequence[str] = (),
    known: bool = False,
    fence=lambda: None,
) -> Published:
    """Make the table's current snapshot hold exactly ``data_paths`` (the output's data files), in
    one commit; then expire old snapshots and delete retired files none of the kept ones read.

    ``summary`` goes into the snapshot's summary (run id, counts); ``known``: the output was
    published to this table before (a missing table is then said to be recreated)."""
    catalog_name = settings.catalog or EMBEDDED
    where = f"table {settings.table} in catalog {catalog_name}"
    try:
        with open_catalog(settings, storage, fence) as catalog:
            table = _load_or_create(catalog, settings, storage, metadata, expected, known=known)
            want = {storage.url(p) for p in data_paths}
            root = storage.url(storage.root).rstrip("/") + "/"
            props = {PREFIX + k: str(v) for k, v in summary.items()}
            props[PREFIX + "settings-digest"] = settings_digest(metadata)
            committed, added, removed = False, 0, 0
            for attempt in range(1, COMMIT_ATTEMPTS + 1):
                current = _current_files(table)
                foreign = sorted(p for p in current if p not in want and not p.startswith(root))
                if foreign:
                    raise UsageError(
                        f"{where} holds {len(foreign)} data file(s) outside the output {storage.describe()} "
                        f"(e.g. {foreign[0]}), added by another writer; this run would remove them. Remove them "
                        "from the table, or publish to another --iceberg-table"
                    )
                add = sorted(want - current.keys())
                remove = [f for p, f in current.items() if p not in want]
                if not add and not remove:
                    break
                fence()
                from pyiceberg.exceptions import CommitFailedException

                try:
                    _commit(table, _data_files(table, add), remove, props)
                except CommitFailedException as e:  # someone else committed first: look again
                    if attempt == COMMIT_ATTEMPTS:
                        raise UsageError(
                            f"{where}: lost the commit race {attempt} times ({e}); another writer keeps "
                            "committing to it"
                        ) from e
                    logger.warning("%s: another commit came first (%s); computing the change again", where, e)
                    table = catalog.load_table(settings.table)
                    continue
                committed, added, removed = True, len(add), len(remove)
                table = catalog.load_table(settings.table)
                _check_committed(table, want, where)
                break
            expired = _expire(table, settings.keep_snapshots)
            released = _released(table, retired, storage)
            snapshot = table.current_snapshot()
            metadata_location = table.metadata_location
        # the catalog that no longer reads them is saved (embedded) or acknowledged (shared): only now
        # may the retired files it released go
        deleted = delete_released(storage, released, fence)
        published = Published(
            table=settings.table,
            catalog=catalog_name,
            snapshot_id=None if snapshot is None else snapshot.snapshot_id,
            metadata_location=metadata_location,
            files=len(want),
            added=added,
            removed=removed,
            committed=committed,
            expired_snapshots=expired,
            deleted_files=tuple(deleted),
        )
    except E5EmbedError:
        raise
    except Exception as e:
        raise step_failed(
            scrub(f"{storage.describe()} is complete, but publishing it to {where} failed", settings.storage_options),
            e,
        ) from e
    logger.info(
        "published %s to %s: snapshot %s (%d file(s): %d added, %d removed%s)",
        storage.describe(),
        where,
        published.snapshot_id,
        published.files,
        added,
        removed,
        "" if committed else "; nothing to commit",
    )
    return published

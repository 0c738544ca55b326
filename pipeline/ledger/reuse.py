"""Where carried-over vectors may come from (``--update``, ``--reuse-from``): pure bookkeeping.

A pool file lends the vectors of its rows (all of them, or those of some sources) to records of
equal ``text_hash``. Another output lends only if it was made with the same model identity and
the same way of running it (``VECTOR_KEYS``: model digest, prefix, pooling, max length, dtypes,
chunking, the text_hash scheme) — checked on its manifest and on every file's footer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.errors import E5EmbedError, UsageError, step_failed
from pipeline.io.storage import Storage, normalize_uri, safe_uri
from pipeline.ledger import compatibility
from pipeline.ledger.files import OutputFiles
from pipeline.ledger.identity import identity, refuse_legacy_chunked
from pipeline.ledger.manifest import Manifest
from pipeline.ledger.output import OutputState, Work

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolFile:
    """A data file whose rows may lend their vectors: all of them, or only those of ``sources``."""

    uri: str  # the output the file is in (a storage root)
    path: str  # the file, as that storage names it
    rows: int
    sources: tuple[str, ...] | None = None  # None: every row


def update_pool(state: OutputState, work: Work) -> list[PoolFile]:
    """--update: the stale data files lend the vectors of their changed shards' rows."""
    return [
        PoolFile(uri=state.storage.uri, path=f.path, rows=int(f.stats.get("rows", 0)), sources=sources)
        for f, sources in work.stale
        if not f.is_rejects
    ]


def reuse_from_pool(
    uris: Sequence[str],
    output: str,
    storage_options: Mapping[str, Any],
    metadata: Mapping[str, Any],
    vector_keys: Sequence[str],
) -> list[PoolFile]:
    """Every data file of the ``--reuse-from`` outputs, after checking each was made compatibly."""
    pool: list[PoolFile] = []
    for uri in uris:
        if normalize_uri(uri) == normalize_uri(output):
            raise UsageError(
                f"--reuse-from {safe_uri(uri)} is the --output itself; --update brings an output up to date"
            )
        storage = Storage(uri, storage_options)
        try:
            manifest = Manifest.load(storage)
        except E5EmbedError:
            raise
        except Exception as e:
            raise step_failed(f"cannot read --reuse-from {safe_uri(uri)}", e) from e
        if manifest is None:
            raise UsageError(f"--reuse-from {safe_uri(uri)} is not an e5-embed output (no _manifest.json)")
        try:
            files = [f for f in OutputFiles(storage).scan() if not f.is_rejects]
        except E5EmbedError as e:  # a cut or foreign file names itself; say which source it is in
            raise type(e)(f"--reuse-from {safe_uri(uri)}: {e}") from e
        for where, made in [("it", manifest.metadata)] + [(storage.display(f.path), f.metadata) for f in files]:
            _check_compatible(uri, where, made, metadata, vector_keys)
        pool += [PoolFile(uri=storage.uri, path=f.path, rows=int(f.stats.get("rows", 0))) for f in files]
        logger.info("--reuse-from %s: %d data file(s) may lend their vectors", safe_uri(uri), len(files))
    return pool


def _check_compatible(
    uri: str, where: str, made: Mapping[str, Any], metadata: Mapping[str, Any], vector_keys: Sequence[str]
) -> None:
    compatibility.refuse_lacking(made, "text_hash", f"--reuse-from {safe_uri(uri)}: {where} was made")
    refuse_legacy_chunked(made, f"--reuse-from {safe_uri(uri)}: {where} was made")
    differ = [k for k in vector_keys if identity(made, k) != identity(metadata, k)]
    if differ:
        diffs = "; ".join(f"{k}: {made.get(k)!r} (this run: {metadata.get(k)!r})" for k in differ)
        raise UsageError(
            f"--reuse-from {safe_uri(uri)}: {where} was made with other settings ({diffs}); its vectors are "
            "not this run's"
        )

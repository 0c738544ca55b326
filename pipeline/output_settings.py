"""The groups the ledger and the publisher read, made by ``JobConfig``: ``OutputSettings`` (the
identity every output file records, and how an existing output is treated) and ``TableSettings``
(which Iceberg table, through which catalog)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.io import schemas
from pipeline.io.layout import Layout
from pipeline.io.storage import normalize_uri
from pipeline.stages.chunking import ChunkSettings
from pipeline.stages.model import ModelInfo


@dataclass(frozen=True, kw_only=True)
class OutputSettings:
    """The job settings the ledger (``pipeline.ledger``) reads, and nothing else: the identity every
    output file records (model, prefix, lengths, dtypes, fields, inputs, windows), how an existing
    output is treated (``--overwrite``, ``--update``, ``--reuse-from``), and what it takes to call
    it complete. Made by ``JobConfig.output_settings``."""

    output: str
    inputs: tuple[str, ...]
    model: str
    revision: str | None
    prefix_text: str
    max_length: int
    dtype: str
    output_dtype: str
    text_field: str
    id_field: str
    title_field: str | None
    input_format: str
    chunking: ChunkSettings | None  # None: records are truncated
    overwrite: bool = False
    update: bool = False
    reuse_from: tuple[str, ...] = ()  # other outputs that lend vectors by text_hash
    skip_corrupt_remainders: bool = False  # a shard cut part-way counts as read to where it broke
    max_bad_fraction: float = 0.0  # the rejected share above which the output is not complete

    @property
    def layout(self) -> Layout:
        """One row per record (truncated) or per window (chunking), as ``JobConfig.layout``."""
        return Layout.of_chunking(self.chunking)

    def metadata(self, info: ModelInfo, model_sha: str | None = None) -> dict[str, Any]:
        """The ``e5_embed`` metadata every file of the output and its manifest record: what it is made
        with (``pipeline.ledger.identity`` says which of it must match)."""
        meta = {
            "model": self.model,
            "revision": self.revision,
            "prefix": self.prefix_text,
            "pooling": "mean",
            "normalized": True,
            "dim": info.hidden_size,
            "max_length": self.max_length,
            "dtype": self.dtype,
            "output_dtype": self.output_dtype,
            "text_field": self.text_field,
            "id_field": self.id_field,
            "title_field": self.title_field,
            "input_format": self.input_format,
            "inputs": sorted({normalize_uri(i) for i in self.inputs}),
            "model_sha": model_sha,  # the Hub commit (git:<sha>) or the local folder's content digest
            # every row's fingerprint of what the model read (its scheme depends on chunking)
            "text_hash": self.layout.text_hash_scheme,
            "producer": schemas.PRODUCER,
            schemas.FORMAT_VERSION_KEY: schemas.FORMAT_VERSION,  # how a later build reads it: ledger.compatibility
        }
        if len(meta["inputs"]) > 1:  # one input: ids relative to it, as they always were
            # several inputs: relative to their common root, so two inputs' part-0 files cannot collide;
            # an output made before (ids relative to each input) is refused rather than mixed
            meta["derived_ids"] = "relative to the inputs' common root"
        chunking = self.chunking
        if chunking is not None:  # absent in truncating runs: their metadata is what it always was
            meta["chunking"] = chunking.metadata()
        return meta


@dataclass(frozen=True, kw_only=True)
class TableSettings:
    """The settings the Iceberg publisher reads: which table, through which catalog (None: the
    embedded SQLite one in the output), how many snapshots to keep, and the output's storage options
    (the table's files are the output's)."""

    table: str  # NAMESPACE.TABLE
    catalog: str | None
    keep_snapshots: int
    rebuild: bool = False  # register an unreadable table again from the output (--iceberg-rebuild)
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)

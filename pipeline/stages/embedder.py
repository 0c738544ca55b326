"""The one in-process entry: ``Embedder(model).encode(texts) -> ndarray``, through the job's own
tokenize and encode stages (the same prefix, truncation, micro-batching, pooling and L2 norm).

For queries at serving time, the demo, the benchmark and tests; a batch job uses ``e5-embed run``.
On a GPU the process is the caller's: the job starts its GPU actors with
``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` (fewer fragmentation OOMs on ragged batches,
``EncodeStage.needs``); set it in this process before its first CUDA call for the same behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import UsageError
from pipeline.io import schemas
from pipeline.io.sink import explode_windows
from pipeline.io.text_hash import text_hashes
from pipeline.stages.chunk_tokenize import ChunkTokenizeStage
from pipeline.stages.chunking import ChunkSettings
from pipeline.stages.e5 import PREFIXES
from pipeline.stages.encode import EncodeStage
from pipeline.stages.model import ModelSource
from pipeline.stages.tokenize import TokenizeStage


def records_table(
    texts: Sequence[str],
    *,
    source: str = "in-process",
    rejects: Sequence[str | None] | None = None,
    titles: Sequence[str | None] | None = None,
    prefix: str = "",
) -> pa.Table:
    """A RECORDS table for ``texts`` (row i, id ``str(i)``), as the reader would make it; with
    ``titles``, as a chunked run's reader (title apart). ``prefix`` goes into each ``text_hash``."""
    n = len(texts)
    reasons = list(rejects) if rejects is not None else [None] * n
    kept = [None if r is not None else t for t, r in zip(texts, reasons)]
    return pa.Table.from_pydict(
        {
            "id": [str(i) for i in range(n)],
            "source": [source] * n,
            "row": list(range(n)),
            "reject_reason": reasons,
            "text_hash": text_hashes(prefix, kept, None if titles is None else [t or "" for t in titles]),
            "text": list(texts),
            "title": list(titles) if titles is not None else [None] * n,
        },
        schema=schemas.RECORDS,
    )


class Embedder:
    """E5 in this process. ``prefix`` is ``passage``, ``query`` or ``none`` (the model card's prefixes)."""

    def __init__(
        self,
        model: str | ModelSource,
        *,
        prefix: str = "passage",
        max_length: int = 512,
        batch_size: int = 32,
        dtype: str = "float32",
        device: str = "cpu",
        output_dtype: str = "float32",
        compile_model: bool = False,
        attention: str = "auto",
        shape_buckets: tuple[int, ...] | None = None,
    ):
        if prefix not in PREFIXES:
            raise UsageError(f"prefix must be one of {', '.join(PREFIXES)}; got {prefix!r}")
        source = model if isinstance(model, ModelSource) else ModelSource(name_or_path=str(model))
        self.source, self.prefix = source, PREFIXES[prefix]
        self._chunkers: dict[ChunkSettings, ChunkTokenizeStage] = {}
        self.tokenizer = TokenizeStage(model=source, prefix=PREFIXES[prefix], max_length=max_length)
        self.encoder = EncodeStage(
            model=source,
            batch_size=batch_size,
            dtype=dtype,
            device=device,
            output_dtype=output_dtype,
            compile_model=compile_model,
            attention=attention,
            shape_buckets=shape_buckets,
        )
        self.encoder.setup()  # the in-process entry loads at construction, like a SentenceTransformer

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def tokenize(self, texts: Sequence[str]) -> pa.Table:
        return self.tokenizer(records_table(texts, prefix=self.prefix))

    def encode_tokens(self, tokens: pa.Table) -> pa.Table:
        return self.encoder(tokens)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised embeddings, one row per text, in order (float32, or float16 if asked)."""
        return embeddings_array(self.encode_tokens(self.tokenize(texts)))

    def encode_windows(
        self, texts: Sequence[str], chunk: ChunkSettings, *, titles: Sequence[str | None] | None = None
    ) -> Windows:
        """Every window of every text (``--chunk-tokens``), as the job embeds them."""
        stage = self._chunkers.get(chunk)
        if stage is None:
            stage = self._chunkers[chunk] = ChunkTokenizeStage(model=self.source, prefix=self.prefix, chunk=chunk)
        encoded = self.encoder(stage(records_table(texts, titles=titles or [None] * len(texts), prefix=self.prefix)))
        rows = explode_windows(
            encoded.filter(pc.is_null(encoded["reject_reason"])),
            schemas.chunk_output_schema(self.dim, self.encoder.output_dtype),
        )
        return Windows(
            embeddings=embeddings_array(rows),
            record=np.asarray(rows["row"].to_numpy(), dtype=np.int64),
            char_start=rows["char_start"].to_numpy(),
            char_end=rows["char_end"].to_numpy(),
        )


@dataclass(frozen=True)
class Windows:
    """Window embeddings of several texts: ``record[i]`` is the index of the text window i came from."""

    embeddings: np.ndarray
    record: np.ndarray
    char_start: np.ndarray
    char_end: np.ndarray


def embeddings_array(table: pa.Table) -> np.ndarray:
    """The ``embedding`` column of an encode output as an (n, dim) array, without Python lists."""
    column = table["embedding"].combine_chunks()
    dim = column.type.list_size
    return column.values.to_numpy(zero_copy_only=False).reshape(-1, dim)

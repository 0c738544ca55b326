"""What publishing to an Iceberg table costs as the output grows: commit time and metadata size
against the number of data files, and an --update that replaces 1,000 of them.

    python -m e5tools.rehearsal.iceberg_bench [--files 100,1000,10000] [--replace 1000] [--json OUT]

Each size is a fresh output folder of N data files in the job's own format (e5-base's 768-wide
float32 vectors, 8 rows each: the commit reads each footer, so the row count hardly matters) and
a fresh embedded catalog; the publish is ``pipeline.ledger.table.publish`` as the job calls it,
timed whole (catalog copy, footers, the commit, the catalog put back). Local disk: on object
storage each footer read is a request (about 10-30 ms each, read 16 at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np
import pyarrow as pa

from pipeline.io import schemas
from pipeline.io.sink import put_file
from pipeline.io.storage import Storage
from pipeline.ledger.table import CATALOG_DIR, publish
from pipeline.output_settings import TableSettings

DIM = 768
ROWS = 8
METADATA = {"model": "intfloat/e5-base-v2", "model_sha": "git:" + "0" * 40, "prefix": "passage: ", "dim": DIM}


def data_file(storage: Storage, source: str, rng: np.random.Generator, version: str = "1:v") -> str:
    vectors = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    table = pa.table(
        {
            "id": [f"{source}:{i}" for i in range(ROWS)],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
            "n_tokens": pa.array([64] * ROWS, pa.int32()),
            "truncated": [False] * ROWS,
            "source": [source] * ROWS,
            "row": pa.array(range(ROWS), pa.int64()),
            "text_hash": pa.array([rng.bytes(16) for _ in range(ROWS)], pa.binary(16)),
        }
    ).cast(schemas.output_schema(DIM))
    return put_file(storage, "", table, METADATA, {"rows": ROWS}, {source: version})


def _size(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def measure(n_files: int, replace: int = 0) -> dict:
    root = tempfile.mkdtemp(prefix=f"iceberg-bench-{n_files}-")
    try:
        storage = Storage(root)
        rng = np.random.default_rng(n_files)
        paths = [data_file(storage, f"shard-{i:06d}.jsonl", rng) for i in range(n_files)]
        settings = TableSettings(table="bench.docs", catalog=None, keep_snapshots=10)
        expected = schemas.output_schema(DIM)
        t0 = time.perf_counter()
        publish(settings, storage, METADATA, expected, paths, {"run-id": "first"})
        append_s = time.perf_counter() - t0
        result = {
            "files": n_files,
            "append_commit_s": round(append_s, 3),
            "append_ms_per_file": round(1000 * append_s / n_files, 3),
            "metadata_bytes": _size(os.path.join(root, CATALOG_DIR)),
            "data_bytes": sum(os.path.getsize(p) for p in paths),
        }
        t0 = time.perf_counter()
        publish(settings, storage, METADATA, expected, paths, {"run-id": "noop"})
        result["unchanged_publish_s"] = round(time.perf_counter() - t0, 3)
        if replace:
            new = [data_file(storage, f"shard-{i:06d}.jsonl", rng, "2:v") for i in range(replace)]  # new versions
            kept = paths[replace:] + new
            t0 = time.perf_counter()
            done = publish(settings, storage, METADATA, expected, kept, {"run-id": "update"}, retired=paths[:replace])
            result.update(
                replaced=replace,
                replace_commit_s=round(time.perf_counter() - t0, 3),
                replace_added=done.added,
                replace_removed=done.removed,
                metadata_bytes_after_replace=_size(os.path.join(root, CATALOG_DIR)),
            )
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default="100,1000,10000")
    parser.add_argument("--replace", type=int, default=1000, help="files an --update replaces (at the sizes above it)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = []
    for n in [int(x) for x in args.files.split(",")]:
        row = measure(n, replace=args.replace if n > args.replace else 0)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What ``e5-embed verify`` costs: the coverage pass against the number of data files, and the
vectors pass in seconds per 1,000 sampled rows.

    python -m e5tools.rehearsal.verify_bench [--files 1000,10000] [--output OUT --sample 200] [--json FILE]

The coverage pass runs over a synthetic output of N files in the job's own format (one shard per
file, 8 rows each, e5-base's 768-wide vectors; ``iceberg_bench``'s files), with its manifest: it
reads each file's ``source`` and ``row`` columns and footer (16 at a time), as verify does. The
vectors pass runs ``verify`` on a real output (``--output``, made by ``e5-embed run``) with
``--sample`` rows: read the rows, read their sources again, the card's float32 encoder on CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

import numpy as np

from e5tools.rehearsal.iceberg_bench import METADATA, data_file
from pipeline.io.storage import Storage
from pipeline.ledger.manifest import Manifest
from pipeline.verify import coverage


def coverage_cost(n_files: int) -> dict:
    root = tempfile.mkdtemp(prefix=f"verify-bench-{n_files}-")
    try:
        storage = Storage(root)
        rng = np.random.default_rng(n_files)
        for i in range(n_files):
            data_file(storage, f"shard-{i:06d}.jsonl", rng)
        manifest = Manifest(
            metadata=dict(METADATA),
            complete=True,
            input_shards=[
                {"path": f"shard-{i:06d}.jsonl", "size": 1, "version": "v", "rows": 8} for i in range(n_files)
            ],
        )
        t0 = time.perf_counter()
        report = coverage.check(storage, manifest)
        seconds = time.perf_counter() - t0
        assert report.ok, report.defects[:3]
        return {"files": n_files, "rows": 8 * n_files, "seconds": round(seconds, 3),
                "ms_per_file": round(1000 * seconds / n_files, 3)}  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


def vectors_cost(output: str, sample: int) -> dict:
    from pipeline.verify.audit import VerifyRequest, verify

    t0 = time.perf_counter()
    audit = verify(VerifyRequest(output=output, sample=sample))
    seconds = time.perf_counter() - t0
    return {
        "output": output,
        "sample": sample,
        "seconds": round(seconds, 2),
        "seconds_per_1000_rows": round(1000 * seconds / max(1, sample), 1),
        "ok": not audit.defects,
        "min_cosine": audit.vectors.figures()["min_cosine"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default="1000,10000")
    parser.add_argument("--output", help="a finished output for the vectors pass")
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    result = {"coverage": [coverage_cost(int(n)) for n in args.files.split(",") if n]}
    if args.output:
        result["vectors"] = vectors_cost(args.output, args.sample)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

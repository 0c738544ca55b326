"""The changing-corpus benchmark: ``python -m e5tools.rehearsal.update_bench [--shards 20 --per-shard 1000] --out DIR``.

A corpus of ``shards × per-shard`` records is embedded; then every shard is rewritten with 5% of
its records edited, 2% deleted and 3% added. On the changed corpus, side by side in one process
and one local Ray cluster (real MiniLM weights on CPU, --max-length 128):

- ``full``: a fresh output (what ``--overwrite`` does: embed everything);
- ``update``: ``--update`` over a copy of the first output;
- ``reuse_from``: a fresh output over the same records re-sharded into fewer, larger files under
  a new folder, with ``--reuse-from`` the first output.

Each row: wall seconds, records encoded, reused, removed; and the outputs' agreement with
``full`` (ids exact, minimum cosine). Writes ``DIR/update_bench.json`` and prints a table.
Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads

from e5tools.sample_text import passages


def _texts(n: int, seed: int) -> list[str]:
    """``n`` distinct texts of 20-60 words drawn from real documentation prose (seeded)."""
    words = sorted({w for _, text in passages(400) for w in text.split() if w.isalpha()})
    rng = random.Random(seed)
    return [f"{k}: " + " ".join(rng.choices(words, k=rng.randint(20, 60))) for k in range(n)]


EDIT, DELETE, ADD = 0.05, 0.02, 0.03


def _write(folder: Path, shards: dict[str, list[tuple[str, str]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in shards.items():
        (folder / name).write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows))


def make_corpora(shards: int, per_shard: int, seed: int = 0) -> tuple[dict, dict]:
    """(before, after): every shard of ``after`` has 5% of records edited, 2% deleted, 3% added."""
    rng = random.Random(seed)
    texts = _texts(shards * per_shard * 2, seed)
    pool = iter(texts[shards * per_shard :])
    before = {
        f"part-{s:04d}.jsonl": [(f"d{s}-{i}", texts[s * per_shard + i]) for i in range(per_shard)]
        for s in range(shards)
    }
    after = {}
    for name, rows in before.items():
        n = len(rows)
        picked = rng.sample(range(n), int(n * (EDIT + DELETE)))
        edited, deleted = set(picked[: int(n * EDIT)]), set(picked[int(n * EDIT) :])
        new_rows = [(i, t + " (revised)" if k in edited else t) for k, (i, t) in enumerate(rows) if k not in deleted]
        new_rows += [(f"{name}-new-{k}", next(pool)) for k in range(int(n * ADD))]
        after[name] = new_rows
    return before, after


def _vectors(out: Path) -> dict[str, np.ndarray]:
    table = pads.dataset(str(out), format="parquet").to_table(columns=["id", "embedding"])
    emb = np.asarray(table["embedding"].to_pylist(), dtype=np.float32)
    return dict(zip(table["id"].to_pylist(), emb))


def _agreement(out: Path, reference: dict[str, np.ndarray]) -> dict[str, Any]:
    got = _vectors(out)
    same_ids = sorted(got) == sorted(reference)
    cos = [float(got[k] @ reference[k]) for k in reference if k in got]
    return {"ids_exact": same_ids, "min_cosine": round(min(cos), 6) if cos else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args()

    import ray

    from e5tools.demo import offline_model_path
    from pipeline.config import JobConfig
    from pipeline.runner import run_job

    out_dir = Path(args.out)
    work = out_dir / "update-bench"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model = offline_model_path()
    before, after = make_corpora(args.shards, args.per_shard)
    corpus = work / "corpus"
    _write(corpus, before)

    def run(name: str, inputs: Path, output: Path, **kw) -> dict[str, Any]:
        config = JobConfig(inputs=(str(inputs),), output=str(output), model=model, max_length=128, progress=False, **kw)
        t0 = time.perf_counter()
        summary = run_job(config)
        wall = time.perf_counter() - t0
        row = {
            "row": name,
            "wall_s": round(wall, 1),
            "encoded": summary.rows_embedded,
            "reused": summary.rows_reused,
            "removed": summary.rows_removed,
            "status": summary.status,
        }
        print(json.dumps(row), flush=True)
        return row

    ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    try:
        first = work / "first"
        rows = [run("initial", corpus, first)]
        _write(corpus, after)  # every shard rewritten in place
        resharded = work / "resharded"
        records = [r for shard in after.values() for r in shard]
        per_file = max(1, len(records) // max(1, (args.shards * 2) // 3))
        _write(resharded, {f"r-{k:04d}.jsonl": records[k : k + per_file] for k in range(0, len(records), per_file)})
        updated = work / "updated"
        shutil.copytree(first, updated)
        rows.append(run("full (fresh output, as --overwrite)", corpus, work / "full"))
        rows.append(run("update", corpus, updated, update=True))
        rows.append(run("reuse_from (re-sharded)", resharded, work / "reused", reuse_from=(str(first),)))
    finally:
        ray.shutdown()
    reference = _vectors(work / "full")
    rows[2].update(_agreement(updated, reference))
    rows[3].update(_agreement(work / "reused", reference))
    full = rows[1]
    for row in rows[2:]:
        row["wall_vs_full"] = round(row["wall_s"] / full["wall_s"], 3)
        row["encoded_fraction"] = round(row["encoded"] / max(1, full["encoded"]), 3)
    result = {
        "records_before": sum(len(v) for v in before.values()),
        "records_after": len(records),
        "shards": args.shards,
        "rows": rows,
    }
    (out_dir / "update_bench.json").write_text(json.dumps(result, indent=2))
    print("| row | wall s | encoded | reused | removed | wall / full | encoded / full | ids exact | min cosine |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['row']} | {r['wall_s']} | {r['encoded']} | {r['reused']} | {r['removed']} | "
            f"{r.get('wall_vs_full', '')} | {r.get('encoded_fraction', '')} | {r.get('ids_exact', '')} | "
            f"{r.get('min_cosine', '')} |"
        )


if __name__ == "__main__":
    main()

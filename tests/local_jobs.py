"""What the whole-run tests share: a job's settings over a local corpus and output, a corpus of
JSONL shards with known ids, and the ids an output holds."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads

from pipeline.config import JobConfig


def job_config(corpus: Path, out: Path, model: str, **kw) -> JobConfig:
    """A run over ``corpus`` into ``out`` with ``model``, no progress bars; ``kw``: any other setting."""
    return JobConfig(inputs=(str(corpus),), output=str(out), model=model, progress=False, **kw)


def write_corpus(folder: Path, shards: int = 4, per_shard: int = 60) -> set[str]:
    """``shards`` JSONL shards of ``per_shard`` records of varied length; their ids."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = set()
    for s in range(shards):
        with open(folder / f"shard-{s}.jsonl", "w") as f:
            for i in range(per_shard):
                f.write(json.dumps({"id": f"d{s}-{i}", "text": f"passage {s} {i} " + "words " * (i % 40)}) + "\n")
                ids.add(f"d{s}-{i}")
    return ids


def output_ids(out: Path) -> list[str]:
    """Every id the output's data files hold (rejects are under ``_rejects/``, not read here)."""
    return pads.dataset(str(out), format="parquet").to_table(columns=["id"])["id"].to_pylist()

"""The rehearsal corpus: many short real passages (numbered, so every record is unique), written as
JSONL shards. Shared by the scale rehearsal and the CPU accounting."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path


def texts_pool(n: int = 20_000, seed: int = 0) -> list[str]:
    """Short real passages (median ~16 words): many records, few tokens each."""
    from e5tools.sample_text import passages

    rng = random.Random(seed)
    words = " ".join(text for _, text in passages(100_000)).split()
    out = []
    for _ in range(n):
        k = max(3, int(rng.lognormvariate(2.8, 0.5)))
        start = rng.randrange(len(words) - k)
        out.append(" ".join(words[start : start + k]))
    return out


def record_text(pool: list[str], i: int) -> str:
    """The text of record ``i`` of a rehearsal corpus (unique: the pool's passage and its number)."""
    return f"{pool[i % len(pool)]} {i}"


def write_corpus(folder: Path, records: int, shards: int, pool: list[str]) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    per = -(-records // shards)
    row = 0
    for s in range(shards):
        n = min(per, records - row)
        if n <= 0:
            break
        with open(folder / f"shard-{s:06d}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"id": f"r{row + i}", "text": record_text(pool, row + i)}) + "\n" for i in range(n))
        row += n

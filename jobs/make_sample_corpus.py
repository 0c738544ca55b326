"""Regenerate the bundled sample corpus (e5tools/data/sample_corpus/) from real text.

The passages are paragraphs of the Python standard library's docstrings: real
English technical prose that every Python installation ships, so the demo and
the benchmarks need no download. Three shards in three formats:
``docs-000.jsonl`` (id, title, text), ``docs-001.jsonl.gz`` and ``docs-002.txt.zst``
(one passage per line, ids derived from shard path and row).

    python jobs/make_sample_corpus.py [--out DIR] [--docs N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os

from e5tools.sample_text import passages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "..", "pipeline", "data", "sample_corpus")
    )
    parser.add_argument("--docs", type=int, default=600)
    args = parser.parse_args()
    docs = passages(args.docs)
    os.makedirs(args.out, exist_ok=True)
    third = len(docs) // 3
    with open(os.path.join(args.out, "docs-000.jsonl"), "w", encoding="utf-8") as f:
        for i, (title, text) in enumerate(docs[:third]):
            f.write(json.dumps({"id": f"doc-{i:05d}", "title": title, "text": text}) + "\n")
    with gzip.open(os.path.join(args.out, "docs-001.jsonl.gz"), "wt", encoding="utf-8") as f:
        for i, (title, text) in enumerate(docs[third : 2 * third], start=third):
            f.write(json.dumps({"id": f"doc-{i:05d}", "title": title, "text": text}) + "\n")
    import zstandard

    lines = "".join(text + "\n" for _, text in docs[2 * third :]).encode()
    with open(os.path.join(args.out, "docs-002.txt.zst"), "wb") as f:
        f.write(zstandard.ZstdCompressor(level=10).compress(lines))
    print(f"wrote {len(docs)} passages to {os.path.abspath(args.out)}")


if __name__ == "__main__":
    main()

"""The benchmark as a script: same as ``e5-embed bench`` (see e5tools/bench.py).

python jobs/benchmark.py --docs 3000 --memory-check --out docs/bench-cpu
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pipeline.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))

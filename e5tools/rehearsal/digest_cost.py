"""What pinning a local model folder costs: ``python -m e5tools.rehearsal.digest_cost [--dir TMP]``.

Folders of e5-base (438 MB) and e5-large (1.34 GB) weight size, random bytes: the driver's digest
(sha256 over every byte, the page cache warm as on a node that just fetched the model) and each
node's hash-while-copy into its content-addressed cache (once per node and digest). Prints
seconds and seconds per GB; nothing is asserted (speed is measured here, never in tests).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from pipeline.stages.model import folder_digest, pinned_copy

SIZES = (("e5-base", 438_000_000), ("e5-large", 1_340_000_000))


def _fill(folder: str, size: int) -> None:
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        left = size
        while left:
            n = min(left, 64 << 20)
            f.write(os.urandom(n))
            left -= n
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write("{}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where the temporary folders go (default: the system's)")
    args = parser.parse_args()
    for name, size in SIZES:
        work = tempfile.mkdtemp(dir=args.dir)
        try:
            model, cache = os.path.join(work, "model"), os.path.join(work, "cache")
            os.makedirs(model)
            _fill(model, size)
            folder_digest(model)  # warm the page cache
            t0 = time.perf_counter()
            digest = folder_digest(model)
            hashed = time.perf_counter() - t0
            os.environ["E5_EMBED_MODEL_CACHE"] = cache
            t0 = time.perf_counter()
            pinned_copy(model, "sha256:" + digest)
            copied = time.perf_counter() - t0
            gb = size / 1e9
            print(
                f"{name}: {gb:.2f} GB  digest {hashed:.2f} s ({hashed / gb:.2f} s/GB)  "
                f"node copy (hash while copying) {copied:.2f} s ({copied / gb:.2f} s/GB)"
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

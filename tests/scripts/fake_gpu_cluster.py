"""Run the job on a local Ray cluster that declares GPUs it doesn't have.

The plan comes from the live probe (which finds no CUDA) and the T4 profile; the encode
actors hold Ray GPUs and encode on CPU. Prints the manifest's plan as one JSON line.
With MAX_GPUS (more than the 2 it has) the encode pool may grow past the cluster, as on an
autoscaling one: the extra actors stay pending and the job still finishes.
Usage: python tests/scripts/fake_gpu_cluster.py CORPUS OUTPUT MODEL [MAX_GPUS]
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import ray

from pipeline.config import JobConfig
from pipeline.runner import run_job


def main(corpus: str, output: str, model: str, max_gpus: str | None = None) -> None:
    os.environ["E5_EMBED_ALLOW_CPU_ON_GPU"] = "1"  # the GPUs are declared, not real (workers inherit this)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ray.init(
        address="local",
        num_cpus=4,
        num_gpus=2,
        resources={"accelerator_type:T4": 1},
        include_dashboard=False,
        logging_level="WARNING",
    )
    try:
        summary = run_job(
            JobConfig(
                inputs=(corpus,),
                output=output,
                model=model,
                progress=False,
                max_gpus=int(max_gpus) if max_gpus else None,
            )
        )
    finally:
        ray.shutdown()
    manifest = json.loads((Path(output) / "_manifest.json").read_text())
    print(json.dumps({"status": summary.status, "rows": summary.rows_embedded, "plan": manifest["runs"][-1]["plan"]}))


if __name__ == "__main__":
    main(*sys.argv[1:5])

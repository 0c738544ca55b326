"""Kill a worker node mid-run on a real multi-node local Ray cluster; the job must still finish.

Run as a script (it owns its cluster): python tests/scripts/node_death.py CORPUS OUTPUT MODEL
Prints one JSON line: what was killed and the job's summary.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from pipeline.config import JobConfig
from pipeline.runner import run_job


def encode_actor_node() -> str | None:
    from ray._private import state

    for actor in state.actors().values():
        if "EncodeStage" in actor.get("ActorClassName", "") and actor.get("State") == "ALIVE":
            return actor["Address"]["NodeID"]
    return None


def main(corpus: str, output: str, model: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    ray.init(address=cluster.address, logging_level="WARNING")
    result: dict = {}
    try:
        config = JobConfig(
            inputs=(corpus,),
            output=output,
            model=model,
            progress=False,
            gpu_actors=1,
            batch_size=4,
            rows_per_block=8,
            rows_per_file=16,
            tokenizer_actors=1,
            shared_local_path=True,
        )  # every "node" of this cluster is this machine
        box: dict = {}
        job = threading.Thread(target=lambda: box.update(summary=run_job(config)), daemon=True)
        job.start()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list(Path(output).glob("part-*.parquet"))) < 2:
            time.sleep(0.2)
        node_id = encode_actor_node()
        victim = next((w for w in workers if w.node_id == node_id), workers[0])
        result["files_before_kill"] = len(list(Path(output).glob("part-*.parquet")))
        result["killed_encode_actor_node"] = victim.node_id == node_id
        cluster.remove_node(victim, allow_graceful=False)
        cluster.add_node(num_cpus=2)  # the autoscaler's replacement
        job.join(timeout=600)
        summary = box.get("summary")
        result["status"] = summary.status if summary else "no result"
        result["rows_embedded"] = summary.rows_embedded if summary else 0
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:4])

"""Where a small run's start-up goes, on this machine: ``python -m e5tools.rehearsal.startup``.

Two parts, printed as one JSON object:
- ``encode_actor``: what an encode actor does before it can take a batch, timed in a fresh process
  (imports of torch and the job's modules, the stage's construction, ``setup``: transformers'
  model class and the weights), with the model class's import alone beside it;
- ``runs``: ``--runs`` whole runs of ``--docs`` passages in this process on one local Ray, each
  run's start-up parts from its own record (the first run pays Ray's and the pools' cold start).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ACTOR = """
import json, sys, time
t0 = time.time(); import torch; t1 = time.time()
from pipeline.stages.encode import EncodeStage
from pipeline.stages.model import ModelSource
t2 = time.time()
stage = EncodeStage(model=ModelSource(name_or_path=sys.argv[1]), batch_size=32, device="cpu")
t3 = time.time(); stage.setup(); t4 = time.time()
print(json.dumps({"import_torch_s": t1 - t0, "import_job_modules_s": t2 - t1, "construct_s": t3 - t2,
                  "setup_s": t4 - t3}))
"""
MODEL_CLASS = (
    "import torch, time; t = time.time(); from transformers.models.bert.modeling_bert import BertModel; "
    "print(time.time() - t)"
)


def encode_actor() -> dict:
    from e5tools.demo import offline_model_path

    actor = [sys.executable, "-c", ACTOR, offline_model_path()]
    parts = json.loads(subprocess.run(actor, capture_output=True, text=True, check=True).stdout)
    alone = subprocess.run([sys.executable, "-c", MODEL_CLASS], capture_output=True, text=True, check=True).stdout
    parts["of_which_transformers_model_class_import_s"] = float(alone)
    return {k: round(v, 2) for k, v in parts.items()}


def runs(docs: int, count: int) -> list[dict]:
    import ray

    from e5tools.demo import offline_model_path
    from pipeline.backend.timeline import startup
    from pipeline.config import JobConfig
    from pipeline.runner import run_job

    root = Path(tempfile.mkdtemp(prefix="e5-startup-"))
    (root / "in").mkdir()
    lines = (json.dumps({"id": str(i), "text": f"passage {i} " + "word " * (i % 60)}) for i in range(docs))
    (root / "in" / "a.jsonl").write_text("\n".join(lines) + "\n")
    out = []
    ray.init(include_dashboard=False, logging_level="WARNING")
    try:
        for k in range(count):
            started = time.time()
            run_job(JobConfig(inputs=(str(root / "in"),), output=str(root / f"out{k}"), model=offline_model_path(),
                              progress=False))  # fmt: skip
            record = json.loads((root / f"out{k}" / "_manifest.json").read_text())["runs"][-1]
            out.append({"wall_s": round(time.time() - started, 2), "startup": startup(record["phases"])})
    finally:
        ray.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    measured = {"runs": runs(args.docs, args.runs)}  # first: the process's launch is the first run's
    measured["encode_actor"] = encode_actor()
    print(json.dumps(measured, indent=1))


if __name__ == "__main__":
    main()

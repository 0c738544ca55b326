#!/usr/bin/env bash
# The whole GPU check in one call, for a session lent a GPU machine (see docs/benchmarks.md):
#   ../shared/device/bundle.sh sentence-transformers==6.2.0 s3fs fsspec zstandard ...  (builds .device/)
#   run: carry [".device"], command: source .device/setup.sh && bash jobs/gpu_check.sh
# Leaves bench.json/bench.md and memory.json/memory.md under $OUT.
set -euo pipefail
out=${OUT:-gpu-check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.csv"
python jobs/gpu_memory_check.py --out "$out/memory"
python -m pipeline bench --device cuda --docs 20000 --out "$out/bench"

#!/usr/bin/env bash
# The whole GPU check in one call, for a session lent a GPU machine (see docs/benchmarks.md):
#   ../shared/device/bundle.sh sentence-transformers==6.2.0 s3fs fsspec zstandard   (builds .device/)
#   run: carry [".device"], command: source .device/setup.sh && bash jobs/gpu_check.sh
# Leaves, under $OUT, in this order (each step writes its files as it ends, so a timeout keeps the earlier ones):
#   memory/       planner's peak-memory estimate vs torch.cuda.max_memory_reserved on the job's encode path
#   bench/        reference, sentence-transformers fp16, encode, encode_compiled, pipeline on the same 20k docs
#   sustained/    the pipeline alone on 200k docs (~30M tokens): throughput once start-up is amortised
# DEVICE=cpu DOCS=40 SUSTAINED_DOCS=80 bash jobs/gpu_check.sh  rehearses it on a CPU machine.
set -euo pipefail
out=${OUT:-gpu-check}
device=${DEVICE:-cuda}
mkdir -p "$out"
python - <<'PY' | tee "$out/versions.txt"
import platform, torch, transformers, pyarrow, ray
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}, ray {ray.__version__}, pyarrow {pyarrow.__version__}")
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")
PY
if [[ $device == cuda ]]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.csv"
  python jobs/gpu_memory_check.py --out "$out/memory"
else
  python jobs/gpu_memory_check.py --rehearse --out "$out/memory"
fi
python -m pipeline bench --device "$device" --docs "${DOCS:-20000}" \
  --rows reference,st_encode,encode,encode_compiled,encode_packed,pipeline --out "$out/bench"
python -m pipeline bench --device "$device" --docs "${SUSTAINED_DOCS:-200000}" --rows pipeline --out "$out/sustained"

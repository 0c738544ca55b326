#!/usr/bin/env bash
# The GPU check, for a session lent a GPU machine (see docs/benchmarks.md, "GPU"; last run 2026-12-04 on an H200):
#   ../shared/device/bundle.sh                                   (builds .device/: Ray, slimmed)
#   python -m e5tools.device_model pack .device/minilm.tar.xz    (real weights small enough to carry)
#   run: carry [".device"], command: source .device/setup.sh && export E5_EMBED_OFFLINE_MODEL=$(python3 -m
#        e5tools.device_model unpack .device/minilm.tar.xz /tmp/models) && STEPS="quick tests" bash jobs/gpu_check.sh
# First contact: STEPS=quick (jobs/gpu_quick.py: versions, the plan's calibration (--calibrate), memory estimate vs reserved, parity with real
# weights, padded/packed encode tokens/s, the whole pipeline; <= 180 s on an H100, <= 4 files, each step
# saved as it finishes, a failing step recorded and the others run). Then, with the time left:
# Steps (STEPS="..." picks some; each fits in a few minutes on an H100 and writes its files as it goes,
# so a timeout keeps the earlier ones; run them in one call or one call each):
#   versions      python/torch/transformers/ray/pyarrow, the device, nvidia-smi
#   tests         the gpu test tier (pytest -m gpu: bf16 parity with real weights, packed attention,
#                 CUDA-graph buckets, the memory cap of actors sharing a GPU) -> gpu-tests.txt
#   memory/       planner's peak-memory estimate vs torch.cuda.max_memory_reserved on the job's encode path
#   profile/      forward-only tokens/s over batch x length (CUDA events); torch.profiler of the encode
#                 path, padded and packed: the attention kernel that ran, the GPU's idle share
#   bench/        reference, sentence-transformers fp16, encode, encode_compiled, encode_packed,
#                 encode_buckets, pipeline on the same 20k docs
#   actors1/ actors2/  the pipeline at 50k and 100k docs with 1 and 2 encode actors per GPU (marginal rates)
#   sustained/    the whole job at 100k and 400k docs (~15M and ~60M tokens, --attention auto: packed on an
#                 H100/H200): its marginal rate, start-up apart, the encoders' busy and padding shares
#                 (SUSTAINED_ATTENTION=padded|packed picks another; SUSTAINED_FACTOR the second size)
# DEVICE=cpu DOCS=40 ACTORS_DOCS=40 SUSTAINED_DOCS=80 bash jobs/gpu_check.sh  rehearses it on a CPU machine.
# tests/jobs/test_gpu_scripts.py runs the steps with code of their own once (STEPS="versions memory profile
# bench", BENCH_ROWS=reference) and parses the rest (bash -n): the actors and sustained steps are
# `pipeline bench --rows pipeline` at other sizes, which tests/e5tools/test_bench.py rehearses (with
# --actors-per-gpu 2) through the same command. ACTORS="1 2" picks the actors step's pool sizes.
set -euo pipefail
# settings come from the environment (STEPS=, DEVICE=, OUT=, ...); an argument is refused rather than
# ignored (`gpu_check.sh --quick` once ran the 30-minute full check on a 15-minute device lease)
if [[ $# -gt 0 ]]; then
  echo "gpu_check.sh takes no arguments (got: $*); use the environment, e.g. STEPS=quick bash jobs/gpu_check.sh" >&2
  exit 2
fi
py=${PYTHON:-python3}  # the device image has python3, not python
out=${OUT:-gpu-check}
device=${DEVICE:-cuda}
steps=" ${STEPS:-versions tests memory profile bench actors sustained} "
rehearse=()
[[ $device == cuda ]] || rehearse=(--rehearse)
mkdir -p "$out"
if [[ $steps == *" quick "* ]]; then
  # its own exit status (1: a step failed) is in quick.json; the other steps still run
  "$py" jobs/gpu_quick.py "${rehearse[@]}" --out "$out/quick" ${PIPELINE_DOCS:+--pipeline-docs "$PIPELINE_DOCS"} || true
fi
if [[ $steps == *" versions "* ]]; then
  "$py" - <<'PY' | tee "$out/versions.txt"
import platform, torch, transformers, pyarrow, ray
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}, ray {ray.__version__}, pyarrow {pyarrow.__version__}")
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")
PY
  if [[ $device == cuda ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.csv"
  fi
fi
if [[ $steps == *" tests "* ]]; then
  # its result is in the file (a failing test does not stop the other steps); no CUDA: all skipped, said
  "$py" -m pytest -q -m gpu -p no:cacheprovider tests/pipeline/stages/test_gpu.py 2>&1 | tee "$out/gpu-tests.txt" || true
fi
if [[ $steps == *" memory "* ]]; then
  "$py" jobs/gpu_memory_check.py "${rehearse[@]}" --out "$out/memory"
fi
if [[ $steps == *" profile "* ]]; then
  "$py" jobs/gpu_profile.py "${rehearse[@]}" --out "$out/profile"
fi
if [[ $steps == *" bench "* ]]; then
  "$py" -m pipeline bench --device "$device" --docs "${DOCS:-20000}" \
    --rows "${BENCH_ROWS:-reference,st_encode,encode,encode_compiled,encode_packed,encode_buckets,pipeline}" \
    --out "$out/bench"
fi
if [[ $steps == *" actors "* ]]; then
  for n in ${ACTORS:-1 2}; do
    "$py" -m pipeline bench --device "$device" --docs "${ACTORS_DOCS:-50000}" --rows pipeline \
      --marginal-factor 2 --actors-per-gpu "$n" --out "$out/actors$n"
  done
fi
if [[ $steps == *" sustained "* ]]; then
  "$py" -m pipeline bench --device "$device" --docs "${SUSTAINED_DOCS:-100000}" --rows pipeline --out "$out/sustained" \
    --marginal-factor "${SUSTAINED_FACTOR:-4}" ${SUSTAINED_ATTENTION:+--pipeline-attention "$SUSTAINED_ATTENTION"}
fi

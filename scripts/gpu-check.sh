#!/usr/bin/env bash
# scripts/gpu-check.sh WHEELDIR [BUDGET_S [gpu_check.py options]]: the GPU check (issue #27), one command on a lent GPU
# machine: our local backend on CUDA against bare instructlab-training, within BUDGET_S seconds
# (default 480). See scripts/gpu_check.py for the phases, benchmarks/README.md ("GPU check") for
# the call. WHEELDIR holds the wheels scripts/gpu-wheels.sh downloaded; they are unpacked into
# $GPU_CHECK_SITE (/tmp/gpu-check-site), ahead of the image's packages; $PYTHON (python3) runs it. Everything goes to $OUT (else ./gpu-check-out):
# gpu-check.log (this output, as it comes: it survives a timeout), gpu_check.json, the two metrics
# files and the runs' logs.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=${1:?usage: scripts/gpu-check.sh WHEELDIR [BUDGET_S]}
budget=${2:-480}
out=${OUT:-$PWD/gpu-check-out}
python=${PYTHON:-python3}
site=${GPU_CHECK_SITE:-/tmp/gpu-check-site}
extra=("${@:3}")
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
{
  echo "==> $(date -u +%H:%M:%S) unpacking $(ls "$wheels"/*.whl | wc -l) wheels into $site"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$wheels"/*.whl
  # The carried wheels first, then the clone (the provider is not installed there), then the image.
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  # run_training starts `torchrun` by name: the image interpreter's own.
  PATH="$(dirname "$(command -v "$python")"):$PATH"
  export PATH
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  echo "==> $(date -u +%H:%M:%S) gpu_check.py, budget ${budget}s"
  "$python" scripts/gpu_check.py "$out" --budget "$budget" --wheels "$wheels" \
    --work "${GPU_CHECK_WORK:-/tmp/gpu-check-work}" "${extra[@]}"
  echo "==> $(date -u +%H:%M:%S) done"
} 2>&1 | tee "$out/gpu-check.log"

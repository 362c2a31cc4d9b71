#!/usr/bin/env bash
# scripts/gpu-wheels.sh [DIR]: download the GPU check's wheels (scripts/gpu-requirements.txt) into
# DIR (default .whl-gpu/, git-ignored), for CPython 3.12 on manylinux x86-64 whatever this machine
# is, each one's sha256 checked against the list; nothing else is left in DIR. Then the device call
# carries DIR (benchmarks/README.md, "GPU check").
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.whl-gpu}
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && python=${PYTHON:-.venv/bin/python}
rm -rf "$dir"
mkdir -p "$dir"
# --require-hashes: pip refuses a wheel whose sha256 is not the list's.
"$python" -m pip download -q --no-deps --require-hashes --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -r scripts/gpu-requirements.txt -d "$dir"
count=$(ls "$dir"/*.whl | wc -l)
expected=$(grep -c -- '--hash=sha256:' scripts/gpu-requirements.txt)
if [ "$count" != "$expected" ]; then
  echo "gpu-wheels: $count wheels in $dir, the list has $expected" >&2
  exit 1
fi
echo "$count wheels, $(du -sh "$dir" | cut -f1), in $dir"

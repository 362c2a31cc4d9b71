#!/usr/bin/env bash
# Create .venv (if needed) and install the provider with its training, Airflow and test dependencies.
# torch goes first and pinned: an unpinned `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SFT_VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.sft-install-stamp"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q -c constraints.txt -e '.[test]'
echo "$want" > "$stamp"

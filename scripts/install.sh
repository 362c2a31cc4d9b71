#!/usr/bin/env bash
# Create a venv (if needed) and install the provider into it. torch goes first and pinned: an
# unpinned `torch` requirement would pull a multi-GB CUDA build.
#   scripts/install.sh            -> .venv      with [test]      (Airflow, training, test tools)
#   scripts/install.sh kfp        -> .venv-kfp  with [kfp-test]  (KFP shim; no Airflow)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = kfp ]; then
  VENV=.venv-kfp EXTRAS=kfp-test CONSTRAINTS=constraints-kfp.txt
else
  VENV=${SFT_VENV:-.venv} EXTRAS=test CONSTRAINTS=constraints.txt
fi
PYTHON=${PYTHON:-python3}
stamp="$VENV/.sft-install-stamp"
want=$(cat pyproject.toml "$CONSTRAINTS" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" -e ".[$EXTRAS]"
echo "$want" > "$stamp"

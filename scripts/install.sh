#!/usr/bin/env bash
# Create a venv (if needed) and install the provider into it, printing a line per phase.
#   scripts/install.sh            -> .venv      with [test]      (Airflow, training, test tools)
#   scripts/install.sh kfp        -> .venv-kfp  with [kfp-test]  (KFP shim; no Airflow)
#   scripts/install.sh airflow-3.1 -> .venv-airflow-3.1 with [test] on Airflow 3.1, the oldest
#                                    supported minor (scripts/test-compat.sh runs in it)
#
# torch goes first and pinned (2.13.0). Which build: SFT_TORCH=auto (default) takes the CPU build
# when no NVIDIA GPU is visible (nvidia-smi or /dev/nvidia0), the CUDA build otherwise;
# SFT_TORCH=cpu or SFT_TORCH=cuda chooses. The CPU build (torch 2.13.0+cpu, about 200 MB) comes
# from the PyTorch CPU index or from a wheel pip already finds (--find-links); PyPI's default
# build is the CUDA one (2.7 GB of nvidia-* wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = kfp ]; then
  VENV=.venv-kfp EXTRAS=kfp-test CONSTRAINTS=constraints-kfp.txt
elif [ "${1:-}" = airflow-3.1 ]; then
  VENV=.venv-airflow-3.1 EXTRAS=test CONSTRAINTS=constraints-airflow-3.1.txt
else
  VENV=${SFT_VENV:-.venv} EXTRAS=test CONSTRAINTS=constraints.txt
fi
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
step() { printf '==> %s\n' "$*"; }

stamp="$VENV/.sft-install-stamp"
want=$(cat pyproject.toml "$CONSTRAINTS" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  step "$VENV is up to date"
  exit 0
fi

# pip's own progress bars on a terminal; one line per phase otherwise (CI logs).
quiet=()
[ -t 1 ] || quiet=(-q)
# setuptools warns on every editable install that a folder named like the package takes
# precedence on imports: that folder is this repository, which is the point of -e.
export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:Editable installation"

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV ($("$PYTHON" --version))"
  "$PYTHON" -m venv "$VENV"
fi
step "upgrading pip"
"$VENV/bin/python" -m pip install "${quiet[@]}" --upgrade pip

torch=${SFT_TORCH:-auto}
if [ "$torch" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 || [ -e /dev/nvidia0 ]; then
    torch=cuda
  else
    torch=cpu
  fi
  reason=" (SFT_TORCH=auto: $([ "$torch" = cuda ] && echo "an NVIDIA GPU is visible" || echo "no NVIDIA GPU is visible"))"
else
  reason=" (SFT_TORCH=$torch)"
fi
case "$torch" in
  cpu)
    step "torch $TORCH_VERSION, CPU build$reason"
    # Where pip already finds the CPU wheel (a --find-links, a mirror), else the PyTorch CPU index.
    cpu_wheel="torch==$TORCH_VERSION+cpu"
    probe() { "$VENV/bin/python" -m pip install -q --dry-run --no-deps "$cpu_wheel" "$@" >/dev/null 2>&1; }
    if probe; then
      "$VENV/bin/python" -m pip install "${quiet[@]}" "$cpu_wheel"
    elif probe --extra-index-url "$TORCH_CPU_INDEX"; then
      "$VENV/bin/python" -m pip install "${quiet[@]}" "$cpu_wheel" --extra-index-url "$TORCH_CPU_INDEX"
    else
      step "no CPU build reachable ($TORCH_CPU_INDEX, or a --find-links with torch-$TORCH_VERSION+cpu):" \
        "installing PyPI's torch $TORCH_VERSION, the CUDA build (about 2.7 GB)"
      "$VENV/bin/python" -m pip install "${quiet[@]}" "torch==$TORCH_VERSION"
    fi
    ;;
  cuda)
    step "torch $TORCH_VERSION, CUDA build from PyPI$reason"
    "$VENV/bin/python" -m pip install "${quiet[@]}" "torch==$TORCH_VERSION"
    ;;
  *)
    echo "SFT_TORCH must be auto, cpu or cuda, got '$torch'" >&2
    exit 2
    ;;
esac

step "airflow-provider-sft[$EXTRAS] and its dependencies, pinned by $CONSTRAINTS"
# The project's own metadata is built in the source tree (setuptools' egg-info): one venv at a time
# (scripts/test.sh installs the venvs side by side). Its dependencies then come from the installed
# metadata, with no lock held.
flock .install.lock "$VENV/bin/python" -m pip install "${quiet[@]}" --no-deps -c "$CONSTRAINTS" -e .
"$VENV/bin/python" -m pip install "${quiet[@]}" -c "$CONSTRAINTS" "airflow-provider-sft[$EXTRAS]"
echo "$want" > "$stamp"
step "installed into $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"

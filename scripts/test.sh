#!/usr/bin/env bash
# Install (if needed), lint, and run the whole test suite. .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '==> %s\n' "$*"; }
# On CI, pip keeps no wheel cache: the disk holds two venvs and a suite's run directories.
if [ "${CI:-}" = true ]; then export PIP_NO_CACHE_DIR=1; fi
bash scripts/install.sh
bash scripts/install.sh kfp
# System packages some tests need, from Debian when run as root: etcd (with crdserver, built from
# Debian's Go sources into ~/.cache, about 5 minutes the first time) for the real Kubernetes API
# server, chromium to render the loss chart offline. Without them those tests skip with the
# reason, except in CI where a failed setup fails the run.
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
  step "system packages from Debian: ${missing[*]}"
  # apt-get clean: the downloaded .debs (hundreds of MB) are not needed once installed.
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    && apt-get clean) || [ "${CI:-}" != true ] || exit 1
fi
step "crdserver, the tests' Kubernetes API server (built once into ~/.cache: about 5 minutes)"
bash tests/k8s/build-crdserver.sh >/dev/null || [ "${CI:-}" != true ] || exit 1
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
step "lint (ruff)"
.venv/bin/ruff check .
step "format (ruff format --check)"
.venv/bin/ruff format --check .
step "type check (mypy, config in pyproject.toml)"
.venv/bin/mypy
# The KFP shim in its own venv (kfp's pins conflict with Airflow's), then everything else.
step "tests of the KFP shim (.venv-kfp)"
.venv-kfp/bin/python -m pytest tests/kfp -p no:cacheprovider "$@"
step "tests (.venv); screenshots of the UI tests go to test-artifacts/"
exec .venv/bin/python -m pytest "$@"

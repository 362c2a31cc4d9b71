#!/usr/bin/env bash
# Install (if needed), lint, and run the whole test suite. .ci/run calls exactly this.
#
# Set-up runs side by side, each part mostly waiting on downloads or using one core: the three
# venvs (.venv on the newest Airflow, .venv-kfp for the KFP shim, .venv-airflow-3.1 on the oldest
# supported Airflow), the system packages and the crdserver build. Then lint and types, then the
# main suite with the KFP shim's tests and the compatibility job (scripts/test-compat.sh) beside it.
# Each part's output goes to test-artifacts/setup/ or test-artifacts/side/, printed when it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '==> %s [%s]\n' "$*" "$(date -u +%H:%M:%S)"; }
# On CI, pip keeps no wheel cache: the disk holds three venvs and a suite's run directories.
if [ "${CI:-}" = true ]; then export PIP_NO_CACHE_DIR=1; fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p test-artifacts/setup test-artifacts/side
started=$(date +%s)

declare -A jobs=()
start() {  # start NAME DIR COMMAND...: run COMMAND in the background, its output in DIR/NAME.log
  local name=$1 dir=$2
  shift 2
  ("$@") >"test-artifacts/$dir/$name.log" 2>&1 &
  jobs[$name]="$! $dir"
}
finish() {  # finish NAME [optional]: wait for NAME; print its log when it failed; a failure is fatal
  local name=$1 pid dir rc=0
  read -r pid dir <<<"${jobs[$name]}"
  wait "$pid" || rc=$?
  if [ "$rc" != 0 ]; then
    echo "--- $name failed (exit $rc); its output (test-artifacts/$dir/$name.log):"
    tail -n 200 "test-artifacts/$dir/$name.log"
    if [ "${2:-}" != optional ] || [ "${CI:-}" = true ]; then exit 1; fi
  fi
  step "$name done (exit $rc)"
}

# System packages some tests need, from Debian when run as root: etcd (with crdserver, built from
# Debian's Go sources into ~/.cache, about 5 minutes the first time) for the real Kubernetes API
# server, chromium to render the loss chart offline. Without them those tests skip with the
# reason, except in CI where a failed setup fails the run.
system_packages() {
  local missing=()
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v chromium >/dev/null || missing+=(chromium)
  if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ]; then
    echo "system packages from Debian: ${missing[*]}"
    # apt-get clean: the downloaded .debs (hundreds of MB) are not needed once installed.
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
      && apt-get clean
  fi
}

step "set-up, side by side: .venv, .venv-kfp, .venv-airflow-3.1, system packages, crdserver"
start venv setup bash scripts/install.sh
start venv-kfp setup bash scripts/install.sh kfp
start venv-airflow-3.1 setup bash scripts/install.sh airflow-3.1
start system-packages setup system_packages
start crdserver setup bash tests/k8s/build-crdserver.sh
finish venv
step "lint (ruff)"
.venv/bin/ruff check .
step "format (ruff format --check)"
.venv/bin/ruff format --check .
step "type check (mypy, config in pyproject.toml)"
.venv/bin/mypy
finish venv-kfp
finish venv-airflow-3.1
finish system-packages optional
finish crdserver optional

# The KFP shim in its own venv (kfp's pins conflict with Airflow's) and the compatibility job on
# Airflow 3.1 run beside the main suite; their output is printed when they end.
step "tests of the KFP shim (.venv-kfp) and the compatibility job (.venv-airflow-3.1), beside the main suite"
start kfp side .venv-kfp/bin/python -m pytest tests/kfp -p no:cacheprovider "$@"
start compat side bash scripts/test-compat.sh "$@"
# Two pytest-xdist workers, each given a whole test file at a time (a module's servers start once):
# a single worker kept about one of the two cores busy, most tests waiting on servers and subprocesses.
workers=${SFT_TEST_WORKERS:-2}
step "tests (.venv, $workers workers); screenshots of the UI tests go to test-artifacts/"
rc=0
.venv/bin/python -m pytest -n "$workers" --dist loadfile "$@" || rc=$?
for side in kfp compat; do
  finish "$side" && tail -n 3 "test-artifacts/side/$side.log"
done
cat test-artifacts/demo-pipeline-*.txt 2>/dev/null || true
step "all tests done in $(($(date +%s) - started)) s (exit $rc)"
exit "$rc"

#!/usr/bin/env bash
# Install everything into .venv, then run the example DAG end to end on the local backend (offline, CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
printf '==> the demo: a real SFT run of the example DAG (airflow dags test, local backend, CPU)\n'
exec .venv/bin/sft-demo "$@"

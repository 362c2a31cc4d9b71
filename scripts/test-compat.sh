#!/usr/bin/env bash
# The compatibility job: the oldest supported Airflow minor (3.1), in its own venv beside the main one.
# scripts/test.sh runs it beside the main suite; alone: bash scripts/test-compat.sh
#   - every module of the package and every name it imports from Airflow exist there;
#   - the example DAGs parse, with their params; the operators' and the trigger's unit tests pass;
#   - the demo pipeline succeeds through `airflow dags test` on the local backend (and sft_evaluate after it);
#   - the deferrable trigger serializes and follows jobs on the real API server (upstream CRDs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh airflow-3.1
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv-airflow-3.1/bin/python -m pytest -p no:cacheprovider \
  tests/unit/test_airflow_imports.py tests/unit/test_dag_params.py tests/unit/operators tests/unit/triggers \
  tests/integration/test_trainjob_trigger.py tests/integration/test_example_dag.py "$@"

"""The example DAG with backend="kubernetes" through `airflow dags test`, against the REAL API server.

The training "pod" is run by the fake kubelet of tests/k8s/fake_core.py: it executes the
TrainJob's trainer command on this machine with the env from the stored spec (HF_TOKEN
resolved from the Secret), as a rank-0 pod with the workspace PVC mounted would.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.demo import DEMO_TRAINING, run_pipeline
from tests.conftest import REPO_ROOT
from tests.integration.test_kubernetes_backend import trainjobs

pytestmark = pytest.mark.slow
TOKEN = "hf_DagLevelSecretToken987"


def test_example_dag_on_kubernetes(cluster, namespace, k8s_connection, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    cluster.auto_run(namespace, extra_env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    workspace = tmp_path / "pvc"
    conf = {
        **DEMO_TRAINING,
        "num_epochs": 1,
        "backend": "kubernetes",
        "base_model": str(tiny_model),
        "workspace": str(workspace),  # the PVC, mounted at the same path in the (fake) pod
        "pvc_name": "sft-workspace",
    }
    log = run_pipeline(workspace, REPO_ROOT / "dags", conf, echo=False)
    text = log.read_text()

    assert "state=success" in text
    assert (workspace / c.FINAL_MODEL_DIR / "model.safetensors").exists()
    assert json.loads((workspace / c.METRICS_SUMMARY_FILE).read_text())["steps"] == 30
    assert "[sft] done in" in text  # the pod log tail reached the task log
    assert trainjobs(cluster, namespace) == []  # deleted after success
    assert not [key for key in cluster.secrets if key[0] == namespace]  # and its Secret with it
    assert TOKEN not in text
    with sqlite3.connect(workspace / "airflow" / "airflow.db") as db:
        stored = " ".join(str(row) for row in db.execute("SELECT value FROM xcom"))
        job = next(
            json.loads(v) for (k, v) in db.execute("SELECT key, value FROM xcom WHERE key = 'training_job'")
        )
    assert TOKEN not in stored
    assert job["backend"] == "kubernetes" and job["namespace"] == namespace

"""The example DAG triggered over Airflow's REST API, against a real `airflow standalone` on loopback."""

from __future__ import annotations

import json
import time

import pytest

from airflow_provider_sft.demo import DEMO_TRAINING

pytestmark = pytest.mark.slow
DAG_ID = "sft_pipeline"


@pytest.fixture(scope="module")
def airflow_api(airflow_standalone):
    return airflow_standalone.base, airflow_standalone.session


def test_trigger_over_rest_and_read_the_metrics_xcom(airflow_api, tiny_model, tmp_path):
    base, session = airflow_api
    conf = {
        **DEMO_TRAINING,
        "num_epochs": 1,
        "base_model": str(tiny_model),
        "workspace": str(tmp_path / "ws"),
    }
    created = session.post(
        f"{base}/api/v2/dags/{DAG_ID}/dagRuns", json={"conf": conf, "logical_date": None}, timeout=30
    )
    assert created.status_code == 200, created.text
    run_id = created.json()["dag_run_id"]
    deadline = time.monotonic() + 600
    state = None
    while time.monotonic() < deadline:
        state = session.get(f"{base}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", timeout=10).json()["state"]
        if state in ("success", "failed"):
            break
        time.sleep(3)
    assert state == "success"
    xcom = session.get(
        f"{base}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/export_model/xcomEntries/metrics",
        timeout=10,
    )
    assert xcom.status_code == 200, xcom.text
    value = xcom.json()["value"]
    metrics = json.loads(value) if isinstance(value, str) else value
    assert metrics["steps"] == 30 and metrics["final_loss"] > 0


def test_invalid_conf_is_rejected_naming_the_field(airflow_api):
    base, session = airflow_api
    answer = session.post(
        f"{base}/api/v2/dags/{DAG_ID}/dagRuns",
        json={"conf": {"lr_scheduler": "cosyne"}, "logical_date": None},
        timeout=30,
    )
    assert answer.status_code == 400, answer.text
    assert "lr_scheduler" in answer.text


def test_connection_form_of_the_huggingface_type_is_served(airflow_api):
    """What the UI's connection form is built from: the API server's hook metadata."""
    base, session = airflow_api
    answer = session.get(f"{base}/ui/connections/hook_meta", timeout=30)
    assert answer.status_code == 200, answer.text
    (meta,) = [m for m in answer.json() if m["connection_type"] == "huggingface"]
    assert meta["hook_name"] == "Hugging Face Hub"
    fields = meta["standard_fields"]
    assert fields["host"]["title"] == "Hub endpoint" and not fields["host"]["hidden"]
    assert fields["password"]["title"] == "Access token"
    assert fields["login"]["hidden"] and fields["port"]["hidden"]
    assert meta["extra_fields"]["revision"]["schema"]["title"] == "Default revision"

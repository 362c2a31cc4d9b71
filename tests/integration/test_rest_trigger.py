"""The example DAG triggered over Airflow's REST API, against a real `airflow standalone` on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from airflow_provider_sft.demo import DEMO_TRAINING
from tests.conftest import REPO_ROOT
from tests.k8s.harness import free_port

pytestmark = pytest.mark.slow
DAG_ID = "sft_pipeline"


@pytest.fixture(scope="module")
def airflow_api(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-home")
    port = free_port()
    env = {
        **os.environ,
        # `airflow standalone` starts its components as `airflow ...` through PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    log = (home / "standalone.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow", "standalone"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        token = None
        while time.monotonic() < deadline and token is None:
            time.sleep(1)
            assert process.poll() is None, (home / "standalone.log").read_text()[-3000:]
            passwords = home / "simple_auth_manager_passwords.json.generated"
            if not passwords.exists():
                continue
            password = json.loads(passwords.read_text())["admin"]
            try:
                answer = requests.post(
                    f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=5
                )
            except requests.ConnectionError:
                continue
            if answer.status_code in (200, 201):
                token = answer.json()["access_token"]
        assert token, "airflow standalone did not come up"
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        while time.monotonic() < deadline:  # the DAG processor must have parsed the example DAG
            if session.get(f"{base}/api/v2/dags/{DAG_ID}", timeout=5).status_code == 200:
                break
            time.sleep(1)
        assert session.patch(f"{base}/api/v2/dags/{DAG_ID}", json={"is_paused": False}, timeout=10).ok
        yield base, session
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


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

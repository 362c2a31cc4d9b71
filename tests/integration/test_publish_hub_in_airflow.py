"""``ExportModelOperator(publish_to="hf://...", hf_conn_id=...)`` in a real Airflow run
(``airflow dags test``), the ``huggingface`` connection given as ``AIRFLOW_CONN_...`` and
pointing at the Hub stand-in: the ``publication`` XCom names the commit, the token is nowhere."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from huggingface_hub import HfApi

from airflow_provider_sft.demo import demo_environment
from tests.integration.test_publish_hub import REPO, TOKEN, hub, trained_run  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

DAG = """
from airflow.sdk import DAG
from airflow_provider_sft.operators.export import ExportModelOperator

with DAG("publish_to_hub", schedule=None, catchup=False):
    ExportModelOperator(
        task_id="export_model",
        training_output_dir={run!r},
        workspace={workspace!r},
        publish_to="hf://{repo}",
        hf_conn_id="hub_standin",
    )
"""


def test_the_export_task_publishes_through_a_huggingface_connection(hub, tmp_path):  # noqa: F811
    workspace = tmp_path / "ws"
    run = trained_run(workspace)
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "publish_to_hub.py").write_text(
        textwrap.dedent(DAG.format(run=str(run), workspace=str(workspace), repo=REPO))
    )
    env = demo_environment(tmp_path, dags)
    env["AIRFLOW_CONN_HUB_STANDIN"] = json.dumps(
        {"conn_type": "huggingface", "password": TOKEN, "host": hub.url}
    )
    env["HF_HUB_OFFLINE"] = "0"
    env["HF_HUB_DISABLE_XET"] = "1"  # the stand-in speaks LFS, not Xet
    env.pop("HF_TOKEN", None)
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    done = subprocess.run(
        [*airflow, "dags", "test", "publish_to_hub"], env=env, capture_output=True, text=True, timeout=300
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "state=success" in log, log[-4000:]

    with sqlite3.connect(tmp_path / "airflow" / "airflow.db") as db:
        rows = db.execute("SELECT key, value FROM xcom WHERE task_id = 'export_model'").fetchall()
    xcoms = {key: json.loads(value) if isinstance(value, str | bytes) else value for key, value in rows}
    head = HfApi(endpoint=hub.url, token=TOKEN).list_repo_commits(REPO)[0]
    assert xcoms["publication"] == {
        "uri": f"hf://{REPO}@{head.commit_id}",
        "pointer": f"hf://{REPO}@main",
        "files": 5,
        "uploaded_bytes": xcoms["publication"]["uploaded_bytes"],
        "skipped_files": 0,
    }
    assert xcoms["publication"]["uploaded_bytes"] > 0 and head.title == "airflow-provider-sft: run run-1"
    assert HfApi(endpoint=hub.url, token=TOKEN).repo_info(REPO).private is True
    assert f"to hf://{REPO}@{head.commit_id}; main now points to it" in log
    assert TOKEN not in log and TOKEN not in json.dumps(xcoms)

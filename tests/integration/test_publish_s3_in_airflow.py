"""ExportModelOperator(publish_to="s3://...", aws_conn_id=...) in a real Airflow run (`airflow
dags test`), the connection an ``AIRFLOW_CONN_...`` ``aws`` connection pointing at moto's server
through its ``endpoint_url`` extra: what a user does with MinIO or Ceph.

A downstream task receives the ``publication`` XCom as Airflow hands it over and writes it down;
the objects are then read back from the server, and no file Airflow or the step wrote (task
logs, the metadata database with its XComs, the run directory) holds the secret key.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.demo import demo_environment
from tests.integration.test_publish_s3 import RUN, finished_run, manifest_files
from tests.servers import MotoServer

pytestmark = pytest.mark.slow

SECRET = "airflow-Publish-Secret-NotReal/42"
DAG_ID = "publish_s3_check"


def write_dag(folder, run_dir, workspace, record) -> None:
    folder.mkdir()
    (folder / "publish_dag.py").write_text(
        textwrap.dedent(
            f"""
            import json
            from datetime import datetime
            from pathlib import Path

            from airflow.sdk import DAG, task

            from airflow_provider_sft.operators.export import ExportModelOperator

            with DAG({DAG_ID!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
                export = ExportModelOperator(
                    task_id="export_model",
                    training_output_dir={str(run_dir)!r},
                    workspace={str(workspace)!r},
                    publish_to="s3://models/chat/",
                    aws_conn_id="minio",
                )

                @task
                def record(publication):
                    Path({str(record)!r}).write_text(json.dumps(publication))

                record(export.output["publication"])
            """
        )
    )


def test_the_export_task_publishes_to_s3_through_an_aws_connection(tiny_model, tmp_path):
    server = MotoServer()
    try:
        server.client().create_bucket(Bucket="models")
        workspace = tmp_path / "ws"
        run_dir = finished_run(workspace, tiny_model)
        record = tmp_path / "publication.json"
        write_dag(tmp_path / "dags", run_dir, workspace, record)
        env = demo_environment(workspace, tmp_path / "dags")
        env["AIRFLOW_CONN_MINIO"] = json.dumps(
            {
                "conn_type": "aws",
                "login": "publisher",
                "password": SECRET,
                "extra": {"endpoint_url": server.url, "region_name": "us-east-1"},
            }
        )
        airflow = [sys.executable, "-m", "airflow"]
        subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True)
        run = subprocess.run(
            [*airflow, "dags", "test", DAG_ID], env=env, capture_output=True, text=True, timeout=600
        )
        log = run.stdout + run.stderr
        assert run.returncode == 0, log[-4000:]

        files = manifest_files(run_dir / c.FINAL_MODEL_DIR)
        prefix = f"chat/runs/{RUN}/"
        publication = json.loads(record.read_text())
        assert publication == {
            "uri": f"s3://models/{prefix}",
            "pointer": "s3://models/chat/latest.json",
            "files": len(files),
            "uploaded_bytes": sum(entry["bytes"] for entry in files.values()),
            "skipped_files": 0,
        }
        client = server.client()
        for name, entry in files.items():
            body = client.get_object(Bucket="models", Key=prefix + name)["Body"].read()
            assert hashlib.sha256(body).hexdigest() == entry["sha256"], name
        pointer = json.loads(client.get_object(Bucket="models", Key="chat/latest.json")["Body"].read())
        assert pointer["model"] == publication["uri"] and pointer["files"] == files
        assert f"published {len(files)} files to s3://models/{prefix}" in log
    finally:
        server.stop()
    assert SECRET not in log
    leaked = [str(p) for p in workspace.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaked  # task logs, airflow.db (XComs, rendered fields), the run directory

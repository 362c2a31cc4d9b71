"""The example DAG's resolve_dataset task through real Airflow (`airflow tasks test`), S3 via a connection.

The task reads ``s3://`` from moto's server on loopback through an ``aws`` connection given as
``AIRFLOW_CONN_MINIO`` (endpoint in its extra), with trigger-form params (`-t`): what a user
does from the UI form with a MinIO-style store.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from airflow_provider_sft.demo import EXAMPLE_DAGS, demo_environment
from tests.dataset_files import ROWS, jsonl_bytes, parquet_bytes
from tests.servers import MotoServer

pytestmark = pytest.mark.slow

SECRET = "minio-Secret-NotReal-123"


@pytest.fixture(scope="module")
def minio():
    server = MotoServer()
    client = server.client(aws_access_key_id="minio", aws_secret_access_key=SECRET)
    client.create_bucket(Bucket="datasets")
    client.put_object(Bucket="datasets", Key="chat/v1/part-0.parquet", Body=parquet_bytes(ROWS[:3]))
    client.put_object(
        Bucket="datasets", Key="chat/v1/part-1.jsonl", Body=jsonl_bytes([*ROWS[3:], '{"x": 1}'])
    )
    yield server
    server.stop()


def test_resolve_dataset_task_reads_s3_through_an_aws_connection(minio, tmp_path):
    env = demo_environment(tmp_path, EXAMPLE_DAGS)
    connection = {
        "conn_type": "aws",
        "login": "minio",
        "password": SECRET,
        "extra": {"endpoint_url": minio.url, "region_name": "us-east-1"},
    }
    env["AIRFLOW_CONN_MINIO"] = json.dumps(connection)
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    params = {
        "dataset": "s3://datasets/chat/v1/",
        "aws_conn_id": "minio",
        "on_bad_record": "skip",
        "workspace": str(tmp_path / "ws"),
    }
    run = subprocess.run(
        [*airflow, "tasks", "test", "sft_pipeline", "resolve_dataset", "-t", json.dumps(params)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert "Resolved dataset s3://datasets/chat/v1/: 5 records (1 skipped) from 2 file(s)" in log
    assert "part-1.jsonl:3: missing field 'messages'" in log  # the skip reason, where it was
    assert SECRET not in log
    (written,) = (tmp_path / "ws" / "runs").glob("*/dataset/train.jsonl")  # this run's own dataset
    lines = written.read_text().splitlines()
    assert [json.loads(line) for line in lines] == ROWS

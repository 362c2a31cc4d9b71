"""ExportModelOperator's ``publish_to``: the destination and the connection become the step's
config and secret environment, and in ``cluster`` mode the config (the pod's ConfigMap) holds no
secret: the keys go to the pod through a Secret."""

from __future__ import annotations

import json

import pytest

from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.backends.kubernetes import KubernetesBackend, program
from airflow_provider_sft.core.backends.local import LocalProcessBackend
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.operators.export import ExportModelOperator

KEY_ID = "AKIAPUBLISHEXAMPLE"
SECRET = "export-Secret-NotReal/123"


@pytest.fixture
def aws_connection(monkeypatch) -> str:
    connection = {
        "conn_type": "aws",
        "login": KEY_ID,
        "password": SECRET,
        "extra": {"endpoint_url": "http://minio:9000", "region_name": "eu-west-1"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_MINIO", json.dumps(connection))
    return "minio"


def test_in_cluster_mode_the_export_pods_config_holds_no_secret(aws_connection, monkeypatch, tmp_path):
    seen: dict = {}

    def run_step(self, step, job_name, config, **_):
        seen.update(step=step, config=config, secret_env=self.credentials.secret_env())
        raise RuntimeError("stop here: no cluster")

    monkeypatch.setattr(KubernetesBackend, "run_step", run_step)
    task = ExportModelOperator(
        task_id="export_model",
        training_output_dir="/data/runs/r1",
        workspace=str(tmp_path),
        publish_to="s3://models/chat",
        aws_conn_id=aws_connection,
        backend="kubernetes",
        kubernetes={"namespace": "ml", "pvc_name": "ws"},
        pvc_mount_path="/data",
    )
    with pytest.raises(RuntimeError, match="stop here"):
        task.execute({"run_id": "manual__1"})
    config = seen["config"]
    assert seen["step"] == "export" and config["publish_to"] == "s3://models/chat/"
    assert config["publish_settings"]["s3"] == {
        "endpoint_url": "http://minio:9000",
        "region_name": "eu-west-1",
    }
    configmap = json.dumps(program.configmap_data(jsonio.dumps(config))["data"])
    assert SECRET not in configmap and KEY_ID not in configmap  # the ConfigMap's content
    assert seen["secret_env"] == {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}


def test_a_bad_publish_to_fails_before_the_step(monkeypatch, tmp_path):
    monkeypatch.setattr(LocalProcessBackend, "run_step", None)  # any call to it is a TypeError
    task = ExportModelOperator(
        task_id="export_model", training_output_dir=str(tmp_path), workspace=str(tmp_path), publish_to="s3:/x"
    )
    with pytest.raises(InvalidParameterError, match="publish_to: 's3:/x': publish to s3://bucket/prefix/"):
        task.execute({"run_id": "manual__1"})


@pytest.mark.parametrize("publish_to", ["s3://models/chat/", None])
def test_a_public_repo_asked_for_outside_the_hub_is_refused_before_the_step(
    publish_to, monkeypatch, tmp_path
):
    monkeypatch.setattr(LocalProcessBackend, "run_step", None)  # any call to it is a TypeError
    task = ExportModelOperator(
        task_id="export_model",
        training_output_dir=str(tmp_path),
        workspace=str(tmp_path),
        publish_to=publish_to,
        publish_private=False,
    )
    with pytest.raises(InvalidParameterError, match="publish_private: False applies only to an hf://"):
        task.execute({"run_id": "manual__1"})

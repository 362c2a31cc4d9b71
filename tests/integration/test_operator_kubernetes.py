"""SFTTrainOperator on the kubernetes backend: bad input fails before anything reaches the server."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from airflow_provider_sft.core.kube import TrainJobClient

from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.operators.train import SFTTrainOperator


class RecordingTI(SimpleNamespace):
    def xcom_push(self, key, value):
        self.pushed[key] = value


@pytest.mark.crd("v2.2")
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"resource_cpu_per_worker": "abc"}, "resource_cpu_per_worker", id="quantity"),
        pytest.param({"metadata_labels": "team"}, "metadata_labels", id="labels"),
        pytest.param(
            {"base_model": "oci://quay.io/m/granite:1"}, "oci:// base models are not supported yet", id="oci"
        ),
    ],
)
def test_bad_input_creates_nothing(cluster, namespace, k8s_connection, monkeypatch, kwargs, message):
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    op = SFTTrainOperator(
        task_id="train",
        backend="kubernetes",
        dataset_path="/workspace/d.jsonl",
        workspace="/workspace",
        namespace=namespace,
        **kwargs,
    )
    ti = RecordingTI(dag_id="d", task_id="train", map_index=-1, pushed={})
    with pytest.raises(InvalidParameterError, match=message):
        op.execute({"ti": ti, "run_id": "manual__1"})
    assert TrainJobClient(cluster.api_client()).list_trainjobs(namespace)["items"] == []
    assert not [key for key in cluster.secrets if key[0] == namespace]
    assert ti.pushed == {}

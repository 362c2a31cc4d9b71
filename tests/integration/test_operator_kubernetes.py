"""SFTTrainOperator on the kubernetes backend, against the real API server with the upstream CRDs.

Bad input fails before anything reaches the server; no path out of a deferral leaves a
TrainJob running: a trigger error event, and Airflow's own deferral timeout.
"""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest

from airflow_provider_sft.compat import TaskDeferralTimeout, TaskDeferred
from airflow_provider_sft.core.errors import InvalidParameterError, TrainingFailedError
from airflow_provider_sft.operators.train import DEFERRAL_TIMEOUT_MARGIN, SFTTrainOperator
from tests.integration.test_kubernetes_backend import exists, trainjobs


class RecordingTI(SimpleNamespace):
    def xcom_push(self, key, value):
        self.pushed[key] = value

    def xcom_pull(self, task_ids=None, key=None, map_indexes=None):
        return self.pushed.get(key)


def operator(namespace, **kwargs):
    return SFTTrainOperator(
        task_id="train",
        backend="kubernetes",
        dataset_path="/workspace/d.jsonl",
        workspace="/workspace",
        namespace=namespace,
        deferrable=True,
        **{"pvc_name": "sft-workspace", **kwargs},
    )


def context():
    ti = RecordingTI(dag_id="d", task_id="train", map_index=-1, pushed={})
    return {"ti": ti, "run_id": "manual__1"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"resource_cpu_per_worker": "abc"}, "resource_cpu_per_worker", id="quantity"),
        pytest.param({"metadata_labels": "team"}, "metadata_labels", id="labels"),
        pytest.param(
            {"base_model": "oci://quay.io/m/granite:1"}, "oci:// base models are not supported yet", id="oci"
        ),
        pytest.param({"runtime_name": "training-hub"}, "available: torch-distributed", id="missing-runtime"),
        pytest.param({"tolerations": '[{"operator": "Sometimes"}]'}, "tolerations", id="tolerations"),
        pytest.param({"envs": "PET_NODE_RANK=1"}, "must not have reserved envs", id="webhook-rule"),
    ],
)
def test_bad_input_creates_nothing(cluster, namespace, k8s_connection, monkeypatch, kwargs, message):
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    ctx = context()
    with pytest.raises(InvalidParameterError, match=message):
        operator(namespace, **kwargs).execute(ctx)
    assert trainjobs(cluster, namespace) == []
    assert not cluster.secrets_in(namespace)
    assert ctx["ti"].pushed == {}


def defer(cluster, namespace, **kwargs):
    """Execute until the task defers; returns (operator, context, the TaskDeferred)."""
    op, ctx = operator(namespace, execution_timeout=timedelta(minutes=30), **kwargs), context()
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(ctx)
    return op, ctx, deferred.value


def test_the_trigger_fires_before_airflows_deferral_timeout(cluster, namespace, k8s_connection):
    _, _, deferred = defer(cluster, namespace, start_timeout_seconds=600)
    trigger = deferred.trigger
    assert deferred.timeout == timedelta(minutes=30) + DEFERRAL_TIMEOUT_MARGIN
    assert trigger.deadline and trigger.start_deadline and trigger.start_timeout_seconds == 600
    job = trainjobs(cluster, namespace)[0]
    assert trigger.job == {
        "backend": "kubernetes",
        "name": job["metadata"]["name"],
        "output_dir": f"/workspace/runs/{job['metadata']['name']}",
        "namespace": namespace,
        "kind": "TrainJob",
        "uid": job["metadata"]["uid"],  # this job, not a later one of the same name
        "created": job["metadata"]["creationTimestamp"],  # the efficiency's time to the first step
    }
    assert job["spec"]["activeDeadlineSeconds"] == 1801  # and the Trainer enforces the run's limit too


def test_a_trigger_error_event_deletes_the_trainjob(cluster, namespace, k8s_connection):
    op, ctx, deferred = defer(cluster, namespace)
    name = deferred.trigger.job["name"]
    event = {"status": "error", "job": deferred.trigger.job, "result": {}, "message": "403 Forbidden"}
    with pytest.raises(TrainingFailedError, match=r"Lost track of TrainJob .*the TrainJob was deleted"):
        op.resume_execution("execute_complete", {"event": event}, ctx)
    assert not exists(cluster, namespace, name)


def test_airflows_deferral_timeout_deletes_the_trainjob(cluster, namespace, k8s_connection):
    op, ctx, deferred = defer(cluster, namespace)
    name = deferred.trigger.job["name"]
    assert exists(cluster, namespace, name)
    with pytest.raises(TaskDeferralTimeout):  # what Airflow's task runner calls when the deferral timed out
        op.resume_execution("__fail__", {"error": "Trigger timeout"}, ctx)
    assert not exists(cluster, namespace, name)


def test_resume_uses_the_coordinates_of_the_event(cluster, namespace, k8s_connection):
    op, ctx, deferred = defer(cluster, namespace)
    name = deferred.trigger.job["name"]
    cluster.drive(namespace, name, "complete", reason="JobsCompleted")
    op.run_name = "something-else-now"  # a re-render must not change which job is completed
    event = {
        "status": "success",
        "job": deferred.trigger.job,
        "result": {"status": "succeeded", "message": "training completed", "reason": "JobsCompleted"},
        "message": "training completed",
    }
    result = op.resume_execution("execute_complete", {"event": event}, ctx)
    assert result["run_name"] == name and result["output_dir"] == deferred.trigger.job["output_dir"]
    assert not exists(cluster, namespace, name)  # deleted after success

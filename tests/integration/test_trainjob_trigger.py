"""TrainingJobTrigger against the real API server: one event per TrainJob outcome, kill deletes the job."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from airflow_provider_sft.core.backends.kubernetes import KubernetesBackend, KubernetesConfig
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.run import TrainingRun
from airflow_provider_sft.triggers.training_job import TrainingJobTrigger
from tests.integration.test_kubernetes_backend import IMAGE, exists
from tests.k8s import harness
from tests.unit.triggers.test_training_job_trigger import job

CONN_ID = "sft_test_k8s"


@pytest.fixture
def connection(cluster, namespace, monkeypatch):
    """An Airflow connection of the cncf ``kubernetes`` type pointing at the test cluster."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", harness.connection_uri(cluster.url, namespace))
    return CONN_ID


def submit(cluster, namespace, name="trig-job", kind="TrainJob"):
    image = {"image": IMAGE} if kind == "PyTorchJob" else {}
    backend = KubernetesBackend(
        config=KubernetesConfig.build(namespace=namespace, pvc_name="sft-workspace", job_kind=kind, **image),
        connect=cluster.connect,
    )
    run = TrainingRun(name, SFTParams(), "/workspace/d.jsonl", f"/workspace/runs/{name}")
    return backend.submit(run)


def trigger(namespace, conn, kind="TrainJob", **kwargs):
    return TrainingJobTrigger(job=job(namespace, kind=kind), kubernetes_conn_id=conn, **kwargs)


async def first_event(trig, drive=None):
    task = asyncio.ensure_future(trig.run().__anext__())
    if drive:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(drive)
    return (await asyncio.wait_for(task, 30)).payload


def test_a_trigger_serialized_under_the_old_class_path_still_follows_its_job(cluster, namespace, connection):
    """A trigger stored in the database before the rename (``triggers.trainjob.TrainJobTrigger``,
    its job without a ``kind``, as versions before PyTorchJobs wrote it) is loaded as the triggerer
    loads it, follows its TrainJob to the end, and serializes itself under the new path."""
    try:  # what the triggerer imports with
        from airflow._shared.module_loading import import_string
    except ImportError:  # Airflow 3.1
        from airflow.utils.module_loading import import_string
    from airflow.models.trigger import Trigger

    submit(cluster, namespace)
    old_job = {k: v for k, v in job(namespace).items() if k != "kind"}
    old_kwargs = {"job": old_job, "kubernetes_conn_id": connection, "deadline": None, "start_deadline": None}
    stored = Trigger("airflow_provider_sft.triggers.trainjob.TrainJobTrigger", old_kwargs)  # the database row
    trigger = import_string(stored.classpath)(**stored.kwargs)
    assert isinstance(trigger, TrainingJobTrigger)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_sft.triggers.training_job.TrainingJobTrigger"
    assert kwargs["job"] == job(namespace)  # the handle, read from the old shape: a TrainJob
    event = asyncio.run(
        first_event(trigger, lambda: cluster.drive(namespace, "trig-job", "complete", reason="JobsCompleted"))
    )
    assert (event["status"], event["result"]["reason"]) == ("success", "JobsCompleted")
    assert event["job"] == job(namespace)


def test_success_event_carries_the_coordinates_and_the_result(cluster, namespace, connection):
    submit(cluster, namespace)
    event = asyncio.run(
        first_event(
            trigger(namespace, connection),
            lambda: cluster.drive(namespace, "trig-job", "complete", reason="JobsCompleted"),
        )
    )
    assert event == {
        "status": "success",
        "job": job(namespace),
        "result": {
            "status": "succeeded",
            "message": "training completed",
            "exit_code": None,
            "reason": "JobsCompleted",
        },
        "message": "training completed",
    }


def test_failure_event_carries_the_reason(cluster, namespace, connection, kind):
    submit(cluster, namespace, kind=kind)

    def drive():
        return cluster.drive(
            namespace, "trig-job", "failed", reason="JobsFailed", message="node-0 OOMKilled", kind=kind
        )

    event = asyncio.run(first_event(trigger(namespace, connection, kind), drive))
    assert event["status"] == "failed" and event["result"]["reason"] == "JobsFailed"
    assert event["message"] == f"{kind} {namespace}/trig-job failed: JobsFailed: node-0 OOMKilled"


def test_deadline_gives_a_timeout_event(cluster, namespace, connection, kind):
    submit(cluster, namespace, kind=kind)
    deadline = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()
    event = asyncio.run(first_event(trigger(namespace, connection, kind, deadline=deadline)))
    assert event["status"] == "timeout" and event["result"]["reason"] == "DeadlineExceeded"


def test_start_deadline_gives_a_timeout_event_with_the_scheduler_events(cluster, namespace, connection):
    submit(cluster, namespace)
    cluster.drive(namespace, "trig-job", "pending")
    pod = cluster.add_pod(namespace, "trig-job")
    cluster.add_event(
        namespace, "Pod", pod, "FailedScheduling", "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    )
    start_deadline = (datetime.now(timezone.utc) + timedelta(seconds=2)).isoformat()
    event = asyncio.run(
        first_event(trigger(namespace, connection, start_deadline=start_deadline, start_timeout_seconds=2))
    )
    assert event["status"] == "timeout" and event["result"]["reason"] == "StartTimeout"
    assert "Insufficient nvidia.com/gpu" in event["message"]


def test_a_deleted_job_is_a_failure_not_a_hang(cluster, namespace, connection):
    submit(cluster, namespace)
    drive = lambda: cluster.custom().delete_namespaced_custom_object(  # noqa: E731
        "trainer.kubeflow.org", "v1alpha1", namespace, "trainjobs", "trig-job"
    )
    event = asyncio.run(first_event(trigger(namespace, connection), drive))
    assert (event["status"], event["result"]["reason"]) == ("failed", "NotFound")


def test_user_kill_deletes_the_job_but_not_after_the_event(cluster, namespace, connection, kind):
    submit(cluster, namespace, kind=kind)
    assert cluster.configmaps_in(namespace)  # the job's program, made with it
    trig = trigger(namespace, connection, kind)
    asyncio.run(trig.on_kill())
    assert not exists(cluster, namespace, "trig-job", kind)
    assert cluster.configmaps_in(namespace) == [] and cluster.secrets_in(namespace) == []

    submit(cluster, namespace, kind=kind)
    fired = trigger(namespace, connection, kind)
    asyncio.run(first_event(fired, lambda: cluster.drive(namespace, "trig-job", "complete", kind=kind)))
    asyncio.run(fired.on_kill())
    assert exists(cluster, namespace, "trig-job", kind)

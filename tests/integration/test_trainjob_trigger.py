"""TrainJobTrigger against the real API server: one event per TrainJob outcome, kill deletes the job."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest
from airflow_provider_sft.core.kube import TrainJobClient
from airflow_provider_sft.core.trainjob import KubernetesOptions, SpecGeneration

from airflow_provider_sft.core.backends.kubernetes import KubernetesBackend
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.run import TrainingRun
from airflow_provider_sft.triggers.trainjob import TrainJobTrigger
from tests.k8s import harness

CONN_ID = "sft_test_k8s"


@pytest.fixture
def connection(cluster, namespace, monkeypatch):
    """An Airflow connection of the cncf ``kubernetes`` type pointing at the test cluster."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", harness.connection_uri(cluster.url, namespace))
    return CONN_ID


def submit(cluster, namespace, name="trig-job"):
    backend = KubernetesBackend(
        TrainJobClient(cluster.api_client()),
        options=KubernetesOptions(namespace=namespace, spec_generation=SpecGeneration.V2_2),
    )
    run = TrainingRun(name, SFTParams(), "/workspace/d.jsonl", f"/workspace/runs/{name}")
    return backend.submit(run)


def trigger(namespace, conn, **kwargs):
    return TrainJobTrigger(name="trig-job", namespace=namespace, kubernetes_conn_id=conn, **kwargs)


async def first_event(trig, drive=None):
    task = asyncio.ensure_future(trig.run().__anext__())
    if drive:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(drive)
    return (await asyncio.wait_for(task, 30)).payload


def test_serialize_round_trip():
    kwargs = {
        "name": "n",
        "namespace": "ns",
        "kubernetes_conn_id": "k",
        "deadline": "2026-11-25T21:00:00+00:00",
        "delete_on_kill": False,
    }
    classpath, serialized = TrainJobTrigger(**kwargs).serialize()
    assert classpath == "airflow_provider_sft.triggers.trainjob.TrainJobTrigger"
    assert serialized == kwargs
    assert TrainJobTrigger(**serialized).serialize() == (classpath, kwargs)


@pytest.mark.crd("v2.2")
def test_success_event(cluster, namespace, connection):
    submit(cluster, namespace)
    event = asyncio.run(
        first_event(
            trigger(namespace, connection),
            lambda: cluster.drive(namespace, "trig-job", "complete", reason="JobsCompleted"),
        )
    )
    assert event == {
        "status": "success",
        "name": "trig-job",
        "namespace": namespace,
        "reason": "JobsCompleted",
        "message": "",
    }


@pytest.mark.crd("v2.2")
def test_failure_event_carries_the_reason(cluster, namespace, connection):
    submit(cluster, namespace)

    def drive():
        return cluster.drive(namespace, "trig-job", "failed", reason="JobsFailed", message="node-0 OOMKilled")

    event = asyncio.run(first_event(trigger(namespace, connection), drive))
    assert (event["status"], event["reason"], event["message"]) == (
        "failed",
        "JobsFailed",
        "node-0 OOMKilled",
    )


@pytest.mark.crd("v2.2")
def test_deadline_gives_a_timeout_event(cluster, namespace, connection):
    submit(cluster, namespace)
    deadline = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()
    event = asyncio.run(first_event(trigger(namespace, connection, deadline=deadline)))
    assert event["status"] == "timeout"


@pytest.mark.crd("v2.2")
def test_a_deleted_job_is_a_failure_not_a_hang(cluster, namespace, connection):
    submit(cluster, namespace)
    drive = lambda: TrainJobClient(cluster.api_client()).delete_trainjob(namespace, "trig-job")  # noqa: E731
    event = asyncio.run(first_event(trigger(namespace, connection), drive))
    assert (event["status"], event["reason"]) == ("failed", "NotFound")


def test_unreachable_cluster_is_an_error_event(namespace, tmp_path, monkeypatch):
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "x", "user": {}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
    }
    (tmp_path / "kc").write_text(json.dumps(kubeconfig))
    monkeypatch.setenv(
        "AIRFLOW_CONN_DOWN",
        json.dumps({"conn_type": "kubernetes", "extra": {"kube_config_path": str(tmp_path / "kc")}}),
    )
    trig = TrainJobTrigger(name="x", namespace="ns", kubernetes_conn_id="down")
    trig.clock = _InstantClock()
    event = asyncio.run(first_event(trig))
    assert event["status"] == "error" and "Get TrainJob ns/x" in event["message"]


@pytest.mark.crd("v2.2")
def test_user_kill_deletes_the_job_but_not_after_the_event(cluster, namespace, connection):
    submit(cluster, namespace)
    trig = trigger(namespace, connection)
    asyncio.run(trig.on_kill())
    assert TrainJobClient(cluster.api_client()).get_trainjob(namespace, "trig-job") is None

    submit(cluster, namespace)
    fired = trigger(namespace, connection)
    asyncio.run(first_event(fired, lambda: cluster.drive(namespace, "trig-job", "complete")))
    asyncio.run(fired.on_kill())
    assert TrainJobClient(cluster.api_client()).get_trainjob(namespace, "trig-job") is not None


class _InstantClock:
    """Retry backoff without waiting (the real clock otherwise)."""

    def now(self):
        return datetime.now(timezone.utc)

    def monotonic(self):
        import time

        return time.monotonic()

    def sleep(self, seconds):
        pass

    async def asleep(self, seconds):
        pass

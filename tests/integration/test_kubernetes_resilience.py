"""Both waits against a REAL API server that restarts, freezes or refuses (upstream CRDs).

The API server (crdserver) is stopped and started again on the same port with etcd kept,
as a control-plane restart does; frozen with SIGSTOP, a half-open peer that accepts
connections and never answers. The 403 comes from the fake core's RBAC stand-in
(crdserver allows everything), answered as the real server words it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from airflow_provider_sft.core.backends.base import JobStatus
from airflow_provider_sft.core.backends.kubernetes import JobPhase, KubeApiError
from airflow_provider_sft.core.backends.kubernetes.kinds import TRAINJOB
from airflow_provider_sft.core.backends.kubernetes.watch import follow_job
from airflow_provider_sft.core.clock import SYSTEM_CLOCK
from airflow_provider_sft.triggers.training_job import TrainingJobTrigger
from tests.integration.test_kubernetes_backend import _until, backend, in_thread, make_run, trainjobs
from tests.integration.test_trainjob_trigger import CONN_ID
from tests.k8s import harness

pytestmark = pytest.mark.slow


@pytest.fixture
def connection(cluster, namespace, monkeypatch):
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", harness.connection_uri(cluster.url, namespace))
    return CONN_ID


def drive_when_served(cluster, *args, **kwargs):
    """The test's own status write, retried while the restarted server registers the CRD again."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return cluster.drive(*args, **kwargs)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def trigger_event(trigger):
    async def main():
        return (await trigger.run().__anext__()).payload

    return main


def test_both_waits_survive_an_api_server_restart(cluster, namespace, connection):
    b = backend(cluster, namespace, delete_on_success=False)
    handle = b.submit(make_run())
    uid = trainjobs(cluster, namespace)[0]["metadata"]["uid"]
    cluster.drive(namespace, handle.name, "running")
    logs: list[str] = []
    sync_wait, sync_result = in_thread(lambda: b.wait(handle, on_log=logs.append, timeout_seconds=180))
    trigger = TrainingJobTrigger(job=handle.to_dict(), kubernetes_conn_id=connection)
    deferred_wait, event = in_thread(lambda: asyncio.run(trigger_event(trigger)()))
    _until(lambda: any("running" in line for line in logs))
    time.sleep(1)  # both are watching now

    cluster.server.stop_apiserver()
    time.sleep(3)  # connections refused meanwhile
    cluster.server.start_apiserver(wait=False)  # back, then a 404 until the CRD is registered again
    drive_when_served(cluster, namespace, handle.name, "complete", reason="JobsCompleted")

    sync_wait.join(120)
    deferred_wait.join(120)
    assert sync_result["value"].status is JobStatus.SUCCEEDED
    assert event["value"]["status"] == "success"
    jobs = trainjobs(cluster, namespace)
    assert [job["metadata"]["uid"] for job in jobs] == [uid]  # no duplicate job was created


def test_a_frozen_server_makes_the_watch_time_out_and_retry_not_hang(cluster, namespace):
    handle = backend(cluster, namespace).submit(make_run())
    cluster.drive(namespace, handle.name, "running")
    seen = []

    async def wait():
        async with cluster.connect() as kube:
            return await follow_job(
                kube,
                TRAINJOB,
                namespace,
                handle.name,
                clock=SYSTEM_CLOCK,
                timeout_seconds=120,
                on_state=seen.append,
                idle_timeout=2,
            )

    waiter, result = in_thread(lambda: asyncio.run(wait()))
    _until(lambda: seen)
    watches_before = sum("watch=true" in q.lower() for _, _, q in cluster.queries)
    cluster.server.freeze()
    try:
        time.sleep(5)  # longer than the idle timeout: the watch must give up on the silent peer
    finally:
        cluster.server.thaw()
    cluster.drive(namespace, handle.name, "complete", reason="JobsCompleted")
    waiter.join(60)
    assert not waiter.is_alive(), "the wait hung on a frozen server"
    assert result["value"].state.phase is JobPhase.SUCCEEDED
    assert sum("watch=true" in q.lower() for _, _, q in cluster.queries) > watches_before  # re-opened


def test_a_403_surfaces_at_once_with_the_rbac_hint(cluster, namespace, connection):
    b = backend(cluster, namespace)
    handle = b.submit(make_run())
    cluster.forbidden = "/trainjobs"  # the list/watch of trainjobs
    try:
        started = time.monotonic()
        with pytest.raises(KubeApiError) as info:
            b.wait(handle, on_log=lambda _l: None, timeout_seconds=120)
        assert time.monotonic() - started < 10  # not retried until the deadline
        assert info.value.status == 403 and "deploy/rbac.yaml" in str(info.value)
        before = len(cluster.requests)
        trigger = TrainingJobTrigger(job=handle.to_dict(), kubernetes_conn_id=connection)
        event = asyncio.run(trigger_event(trigger)())
        assert (
            event["status"] == "error"
            and "403" in event["message"]
            and "deploy/rbac.yaml" in event["message"]
        )
        refused = [path for _, path in cluster.requests[before:] if path.endswith("/trainjobs")]
        assert len(refused) == 1  # one refused call, no retry loop
    finally:
        cluster.forbidden = ""
        with contextlib.suppress(Exception):
            b.cancel(handle)

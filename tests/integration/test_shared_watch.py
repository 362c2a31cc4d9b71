"""The triggerer's shared watch (``informer.py``) against the REAL API server (crdserver, upstream CRDs).

Requests are read at the loopback proxy in front of the server (``cluster.queries``): one watch
per namespace and kind, whatever the number of triggers; a join-time read per trigger; a list only
when the server no longer has the watch's version.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs

import pytest

from airflow_provider_sft.core.backends.kubernetes.informer import (
    PROVIDER_SELECTOR,
    SHARED_WATCHES,
    JobInformer,
    slim,
)
from airflow_provider_sft.core.backends.kubernetes.kinds import TRAINJOB
from airflow_provider_sft.core.backends.kubernetes.manifest import build_trainjob, training_work
from airflow_provider_sft.core.backends.kubernetes.watch import follow_job
from airflow_provider_sft.core.clock import SYSTEM_CLOCK
from airflow_provider_sft.triggers.training_job import TrainingJobTrigger
from tests.integration.test_kubernetes_backend import _until, backend, in_thread, make_run
from tests.integration.test_kubernetes_resilience import drive_when_served
from tests.integration.test_trainjob_trigger import CONN_ID
from tests.k8s import harness

pytestmark = pytest.mark.slow


@pytest.fixture
def connection(cluster, namespace, monkeypatch):
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", harness.connection_uri(cluster.url, namespace))
    return CONN_ID


def submit(cluster, namespace, names, running=True):
    b = backend(cluster, namespace, delete_on_success=False)
    handles = [b.submit(make_run(name)) for name in names]
    if running:
        for handle in handles:
            cluster.drive(namespace, handle.name, "running")
    return handles


def trainjob_calls(cluster, namespace, since=0):
    """(kind of call, query) of the calls on the TrainJobs of ``namespace`` since index ``since``."""
    calls = []
    for method, path, query in cluster.queries[since:]:
        if method != "GET" or f"/namespaces/{namespace}/trainjobs" not in path:
            continue
        params = {key: values[0] for key, values in parse_qs(query).items()}
        if path.endswith("/trainjobs"):
            calls.append(("watch" if params.get("watch", "").lower() == "true" else "list", params))
        else:
            calls.append(("get", params))
    return calls


def shared_watches(calls):
    return [params for kind, params in calls if kind == "watch" and params.get("labelSelector")]


def own_watches(calls):
    return [params for kind, params in calls if kind == "watch" and params.get("fieldSelector")]


async def events(triggers):
    return [e.payload for e in await asyncio.gather(*(t.run().__anext__() for t in triggers))]


def test_one_watch_fans_out_to_every_trigger_and_stops_with_the_last(cluster, namespace, connection):
    handles = submit(cluster, namespace, [f"fan-{i}" for i in range(5)])
    before = len(cluster.queries)
    triggers = [TrainingJobTrigger(job=h.to_dict(), kubernetes_conn_id=connection) for h in handles]
    waiting, result = in_thread(lambda: asyncio.run(events(triggers)))
    # every trigger read its job once, and the shared watch is open
    _until(
        lambda: (
            [k for k, _ in trainjob_calls(cluster, namespace, before)].count("get") == 5
            and shared_watches(trainjob_calls(cluster, namespace, before))
        )
    )
    time.sleep(0.5)
    for handle in handles:
        cluster.drive(namespace, handle.name, "complete", reason="JobsCompleted")
    waiting.join(30)
    assert [e["status"] for e in result["value"]] == ["success"] * 5
    assert [e["job"]["name"] for e in result["value"]] == [h.name for h in handles]  # each its own
    calls = trainjob_calls(cluster, namespace, before)
    watches = shared_watches(calls)
    assert len(watches) == 1 and watches[0]["labelSelector"] == PROVIDER_SELECTOR
    assert watches[0]["allowWatchBookmarks"].lower() == "true" and watches[0]["resourceVersion"]
    assert own_watches(calls) == []  # no trigger watched its job on its own
    assert [params for kind, params in calls if kind == "list"] == [
        {"labelSelector": PROVIDER_SELECTOR, "limit": "500"}
    ]  # listed once, in pages of 500
    assert len(SHARED_WATCHES) == 0  # stopped with the last trigger


def test_a_job_that_ended_before_its_trigger_joined_is_seen(cluster, namespace, connection):
    """The shared watch is running (another trigger started it) and will never send an event for
    this job again: the trigger's join-time read sees that it ended."""
    first, late = submit(cluster, namespace, ["early", "late"])

    async def main():
        running = asyncio.ensure_future(
            TrainingJobTrigger(job=first.to_dict(), kubernetes_conn_id=connection).run().__anext__()
        )
        await asyncio.to_thread(_until, lambda: shared_watches(trainjob_calls(cluster, namespace)))
        before = len(cluster.queries)
        await asyncio.to_thread(cluster.drive, namespace, late.name, "complete", reason="JobsCompleted")
        await asyncio.sleep(0.5)  # the watch has long passed that change
        event = await asyncio.wait_for(
            TrainingJobTrigger(job=late.to_dict(), kubernetes_conn_id=connection).run().__anext__(), 10
        )
        await asyncio.to_thread(cluster.drive, namespace, first.name, "complete", reason="JobsCompleted")
        await asyncio.wait_for(running, 10)
        return event.payload, trainjob_calls(cluster, namespace, before)

    event, calls = asyncio.run(main())
    assert (event["status"], event["result"]["reason"]) == ("success", "JobsCompleted")
    assert len(shared_watches(calls)) == 0  # the late trigger opened no watch: it joined the one running


def test_a_410_lists_again_and_hands_the_list_to_the_waiters(cluster, namespace):
    (handle,) = submit(cluster, namespace, ["relist"])
    seen = []

    async def main():
        async with cluster.connect() as kube:
            informer = JobInformer(kube, TRAINJOB, namespace)
            informer.resource_version = "1"  # long compacted: the server answers 410 Gone
            with informer.waiting(handle.name, seen.append, lambda exc: seen.append(exc)):
                informer.start()
                try:
                    await asyncio.to_thread(_until, lambda: seen)
                finally:
                    await informer.stop()
            return informer

    before = len(cluster.queries)
    informer = asyncio.run(main())
    assert informer.lists == 1 and informer.resource_version not in (None, "1")
    assert seen[0]["metadata"]["name"] == handle.name and seen[0]["status"]["jobsStatus"][0]["ready"] == 1
    assert "spec" in seen[0] and "trainer" not in seen[0]["spec"]  # waiters get the status, not the spec
    calls = trainjob_calls(cluster, namespace, before)
    assert [k for k, _ in calls][:2] == ["watch", "list"]  # the watch from "1" refused, then one list


def test_an_api_server_restart_is_ridden_out_with_one_list_per_namespace_at_most(cluster, connection):
    namespaces = [f"rs-{i}-{int(time.time() * 1000) % 10**8}" for i in range(2)]
    handles = [h for ns in namespaces for h in submit(cluster, ns, [f"r-{i}" for i in range(3)])]
    triggers = [TrainingJobTrigger(job=h.to_dict(), kubernetes_conn_id=connection) for h in handles]
    waiting, result = in_thread(lambda: asyncio.run(events(triggers)))
    _until(lambda: all(shared_watches(trainjob_calls(cluster, ns)) for ns in namespaces))
    time.sleep(0.5)

    before = len(cluster.queries)
    cluster.server.stop_apiserver()
    time.sleep(3)  # connections refused meanwhile
    cluster.server.start_apiserver(wait=False)
    for handle in handles:
        drive_when_served(cluster, handle.namespace, handle.name, "complete", reason="JobsCompleted")
    waiting.join(120)
    assert [e["status"] for e in result["value"]] == ["success"] * 6
    for ns in namespaces:
        calls = trainjob_calls(cluster, ns, before)
        assert [k for k, _ in calls].count("list") <= 1  # one list per namespace, if any
        assert [k for k, _ in calls].count("get") == 0  # no trigger read its own job again
        assert own_watches(calls) == []
    assert len(SHARED_WATCHES) == 0


def test_a_job_without_the_providers_label_is_watched_on_its_own(cluster, namespace, connection):
    """A job the shared watch does not select (created without ``app.kubernetes.io/managed-by``,
    e.g. by hand) is still followed: its trigger falls back to a watch of its own."""
    from airflow_provider_sft.core.backends.kubernetes import KubernetesConfig, SpecGeneration

    config = KubernetesConfig.build(namespace=namespace, pvc_name="sft-workspace")
    run = make_run("unlabelled")
    body = build_trainjob(training_work(run, config, labels={}), config, generation=SpecGeneration.V2_2)
    cluster.custom().create_namespaced_custom_object(
        "trainer.kubeflow.org", "v1alpha1", namespace, "trainjobs", body
    )
    job = {"backend": "kubernetes", "name": run.name, "output_dir": run.output_dir, "namespace": namespace}
    before = len(cluster.queries)

    async def main():
        task = asyncio.ensure_future(
            TrainingJobTrigger(job=job, kubernetes_conn_id=connection).run().__anext__()
        )
        await asyncio.to_thread(_until, lambda: own_watches(trainjob_calls(cluster, namespace, before)))
        await asyncio.to_thread(cluster.drive, namespace, run.name, "complete", reason="JobsCompleted")
        return (await asyncio.wait_for(task, 20)).payload

    assert asyncio.run(main())["status"] == "success"


def test_the_waiters_keep_only_what_they_read_of_a_job():
    job = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": "j", "resourceVersion": "7", "labels": {"a": "b"}, "managedFields": [{}] * 3},
        "spec": {"suspend": True, "trainer": {"command": ["x"] * 100}, "runtimeRef": {"name": "r"}},
        "status": {"conditions": [{"type": "Complete", "status": "True"}]},
    }
    assert slim(job) == {
        "kind": "TrainJob",
        "metadata": {"name": "j", "resourceVersion": "7", "labels": {"a": "b"}},
        "spec": {"suspend": True},
        "status": {"conditions": [{"type": "Complete", "status": "True"}]},
    }


def test_the_shared_watch_rides_out_a_frozen_server(cluster, namespace):
    """The resilience suite's freeze, on the shared watch: its silent connection is dropped after its
    idle timeout and the watch re-opened from its version; the wait does not hang."""
    (handle,) = submit(cluster, namespace, ["frozen"])
    seen = []

    async def wait():
        async with cluster.connect() as kube:
            informer = JobInformer(kube, TRAINJOB, namespace, idle_timeout=2)
            informer.start()
            try:
                return await follow_job(
                    kube,
                    TRAINJOB,
                    namespace,
                    handle.name,
                    clock=SYSTEM_CLOCK,
                    timeout_seconds=120,
                    on_state=seen.append,
                    informer=informer,
                )
            finally:
                await informer.stop()

    waiter, result = in_thread(lambda: asyncio.run(wait()))
    _until(lambda: seen and shared_watches(trainjob_calls(cluster, namespace)))
    watches_before = len(shared_watches(trainjob_calls(cluster, namespace)))
    cluster.server.freeze()
    try:
        time.sleep(5)  # longer than the idle timeout
    finally:
        cluster.server.thaw()
    cluster.drive(namespace, handle.name, "complete", reason="JobsCompleted")
    waiter.join(60)
    assert not waiter.is_alive(), "the wait hung on a frozen server"
    assert result["value"].state.phase.value == "succeeded"
    assert len(shared_watches(trainjob_calls(cluster, namespace))) > watches_before  # re-opened

"""The Kubernetes backend against a REAL API server (crdserver + etcd) with the TrainJob CRD.

Pods, logs, secrets and the Trainer controller do not exist here: tests/k8s/fake_core.py
stands in for them (it says how), and drives TrainJob status through the real /status.
"""

from __future__ import annotations

import json
import threading

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends.base import JobStatus
from airflow_provider_sft.core.backends.kubernetes import Credentials, KubernetesBackend
from airflow_provider_sft.core.clock import SYSTEM_CLOCK
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.kube import KubeApiError, TrainJobClient
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.run import TrainingRun
from airflow_provider_sft.core.trainjob import JobPhase, KubernetesOptions, SpecGeneration
from airflow_provider_sft.core.waiting import wait_for_trainjob

TOKEN = "hf_ThisIsTheSecretTokenValue42"
PULL = '{"auths": {"quay.io": {"auth": "c2VjcmV0OnB1bGw="}}}'


def make_run(name="sft-run-1", **values):
    params = SFTParams.parse(
        {"metadata_labels": "team=ml", "metadata_annotations": "owner=ml@example.com", **values}
    )
    return TrainingRun(name, params, "/workspace/dataset/train.jsonl", f"/workspace/runs/{name}")


def backend(cluster, namespace, generation=SpecGeneration.AUTO, **kwargs):
    options = KubernetesOptions(
        namespace=namespace, pvc_name="sft-workspace", spec_generation=generation, **kwargs.pop("options", {})
    )
    return KubernetesBackend(
        TrainJobClient(cluster.api_client()),
        options=options,
        run_labels={c.LABEL_DAG_ID: "sft_pipeline", c.LABEL_RUN_ID: "manual__2026-11-25T20:00:00+00:00"},
        **kwargs,
    )


def stored(cluster, namespace, name):
    return cluster.custom().get_namespaced_custom_object(
        c.TRAINER_GROUP, c.TRAINER_VERSION, namespace, c.TRAINJOB_PLURAL, name
    )


@pytest.mark.crd("v2.2")
def test_v22_trainjob_is_created_and_nothing_is_pruned(cluster, namespace):
    handle = backend(cluster, namespace).submit(make_run())
    job = stored(cluster, namespace, handle.name)
    patch = job["spec"]["runtimePatches"][0]
    assert patch["manager"] == "airflow-provider-sft"
    pod = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"][
        "template"
    ]
    assert pod["metadata"]["labels"]["team"] == "ml"
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "sft-workspace"
    assert pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == "/workspace"
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 1 and "numProcPerNode" not in trainer  # "auto": the runtime decides
    assert trainer["resourcesPerNode"]["limits"] == {"cpu": "4", "memory": "64Gi", "nvidia.com/gpu": "1"}
    assert job["spec"]["runtimeRef"] == {
        "name": "training-hub",
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
    }
    labels = job["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "airflow-provider-sft"
    assert labels["airflow-provider-sft/run-id"] == "manual__2026-11-25T20-00-00-00-00"


@pytest.mark.crd("v2.1")
def test_v21_trainjob_is_created_with_pod_template_overrides(cluster, namespace):
    handle = backend(cluster, namespace).submit(make_run(resource_num_procs_per_worker=2))
    job = stored(cluster, namespace, handle.name)
    override = job["spec"]["podTemplateOverrides"][0]
    assert override["targetJobs"] == [{"name": "node"}]
    assert override["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "sft-workspace"
    assert job["spec"]["labels"] == {"team": "ml"}
    assert job["spec"]["trainer"]["numProcPerNode"] == 2
    assert "runtimePatches" not in job["spec"]


@pytest.mark.crd("v2.2")
def test_wrong_generation_is_rejected_not_silently_pruned(cluster, namespace):
    with pytest.raises(KubeApiError, match=r'400 .*unknown field \\?"spec.podTemplateOverrides\\?"') as info:
        backend(cluster, namespace, SpecGeneration.V2_1).submit(make_run())
    assert info.value.status == 400


@pytest.mark.crd("v2.2")
def test_server_side_validation_errors_are_surfaced_with_the_field(cluster, namespace):
    with pytest.raises(KubeApiError) as info:
        backend(cluster, namespace, options={"runtime_name": ""}).submit(make_run())
    assert info.value.status == 422
    assert "spec.runtimeRef.name" in str(info.value)
    assert not cluster.secrets  # nothing half-created


@pytest.mark.crd("v2.2")
def test_duplicate_submit_reattaches(cluster, namespace):
    b = backend(cluster, namespace)
    first = b.submit(make_run())
    uid = stored(cluster, namespace, first.name)["metadata"]["uid"]
    again = b.submit(make_run())
    assert again == first
    assert stored(cluster, namespace, first.name)["metadata"]["uid"] == uid
    jobs = TrainJobClient(cluster.api_client()).list_trainjobs(
        namespace, "app.kubernetes.io/managed-by=airflow-provider-sft"
    )
    assert len(jobs["items"]) == 1


@pytest.mark.crd("v2.2")
def test_a_failed_job_is_deleted_and_submitted_again(cluster, namespace):
    b = backend(cluster, namespace)
    handle = b.submit(make_run())
    uid = stored(cluster, namespace, handle.name)["metadata"]["uid"]
    cluster.drive(namespace, handle.name, "failed", reason="JobsFailed", message="node-0 OOMKilled")
    b.submit(make_run())
    assert stored(cluster, namespace, handle.name)["metadata"]["uid"] != uid


@pytest.mark.crd("v2.2")
def test_secrets_never_reach_the_spec(cluster, namespace):
    b = backend(cluster, namespace, credentials=Credentials(hf_token=TOKEN, oci_pull_secret=PULL))
    handle = b.submit(make_run(envs="MODE=fast"))
    job = stored(cluster, namespace, handle.name)
    every_trainjob = json.dumps(
        cluster.custom().list_cluster_custom_object(c.TRAINER_GROUP, c.TRAINER_VERSION, c.TRAINJOB_PLURAL)
    )
    assert TOKEN not in every_trainjob and "c2VjcmV0OnB1bGw=" not in every_trainjob
    assert TOKEN not in repr(b) and TOKEN not in repr(b.credentials)
    env = {e["name"]: e for e in job["spec"]["trainer"]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{handle.name}-secrets",
        "key": "hf-token",
    }
    secret = cluster.secrets[(namespace, f"{handle.name}-secrets")]
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    assert (
        secret["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    )  # garbage-collected with the job
    pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert pod["template"]["spec"]["template"]["spec"]["imagePullSecrets"] == [
        {"name": f"{handle.name}-secrets"}
    ]


def test_oci_models_are_rejected_before_anything_is_sent(cluster, namespace):
    with pytest.raises(InvalidParameterError, match="oci:// base models are not supported yet"):
        backend(cluster, namespace).submit(make_run(base_model="oci://quay.io/models/granite:1"))


@pytest.mark.crd("v2.2")
def test_status_transitions_and_the_failure_reason(cluster, namespace):
    b = backend(cluster, namespace)
    handle = b.submit(make_run())
    seen = []
    result = {}
    waiter = threading.Thread(
        target=lambda: result.setdefault(
            "state",
            wait_for_trainjob(
                b.client, namespace, handle.name, clock=SYSTEM_CLOCK, timeout_seconds=60, on_event=seen.append
            ),
        )
    )
    waiter.start()
    _until(lambda: seen)
    cluster.drive(namespace, handle.name, "suspended", reason="Suspended", message="queued by Kueue")
    _until(lambda: seen[-1].phase is JobPhase.SUSPENDED)
    cluster.drive(namespace, handle.name, "running")
    _until(lambda: seen[-1].phase is JobPhase.RUNNING)
    cluster.drive(
        namespace,
        handle.name,
        "failed",
        reason="JobsFailed",
        message="node-0 exited with code 1",
        log="[sft] boom\nERROR: CUDA out of memory",
    )
    waiter.join(30)
    assert [s.phase for s in seen] == [
        JobPhase.PENDING,
        JobPhase.SUSPENDED,
        JobPhase.RUNNING,
        JobPhase.FAILED,
    ]
    assert result["state"].reason == "JobsFailed"
    logs = []
    final = b.finish(handle, result["state"], logs.append)
    assert final.status is JobStatus.FAILED
    assert (
        final.message == f"TrainJob {namespace}/{handle.name} failed: JobsFailed: node-0 exited with code 1"
    )
    assert logs[-1] == "ERROR: CUDA out of memory"  # the pod log tail reaches the task log
    assert b.client.get_trainjob(namespace, handle.name) is None  # deleted on failure


@pytest.mark.crd("v2.2")
def test_keep_failed_jobs_for_debugging(cluster, namespace):
    b = backend(cluster, namespace, keep_failed=True)
    handle = b.submit(make_run())
    cluster.drive(namespace, handle.name, "failed", reason="JobsFailed")
    state, _ = b.state(handle)
    assert b.finish(handle, state, lambda _l: None).status is JobStatus.FAILED
    assert b.client.get_trainjob(namespace, handle.name) is not None


@pytest.mark.crd("v2.2")
def test_410_gone_relists_and_keeps_waiting(cluster, namespace):
    b = backend(cluster, namespace)
    handle = b.submit(make_run())

    class StaleFirstWatch(TrainJobClient):
        watched = []

        def watch_trainjob(self, namespace, name, resource_version, timeout_seconds):
            self.watched.append(resource_version)
            if len(self.watched) == 1:
                resource_version = "1"  # long compacted: the server answers 410 Gone
            return super().watch_trainjob(namespace, name, resource_version, timeout_seconds)

    client = StaleFirstWatch(cluster.api_client())
    result = {}
    waiter = threading.Thread(
        target=lambda: result.setdefault(
            "state", wait_for_trainjob(client, namespace, handle.name, clock=SYSTEM_CLOCK, timeout_seconds=60)
        )
    )
    waiter.start()
    _until(lambda: len(client.watched) >= 2)
    cluster.drive(namespace, handle.name, "complete", reason="JobsCompleted")
    waiter.join(30)
    assert result["state"].phase is JobPhase.SUCCEEDED


@pytest.mark.crd("v2.2")
def test_timeout_deletes_the_job_and_its_secret(cluster, namespace):
    b = backend(cluster, namespace, credentials=Credentials(hf_token=TOKEN))
    handle = b.submit(make_run())
    result = b.wait(handle, on_log=lambda _l: None, timeout_seconds=1)
    assert result.status is JobStatus.TIMED_OUT
    assert b.client.get_trainjob(namespace, handle.name) is None
    assert (namespace, f"{handle.name}-secrets") not in cluster.secrets


@pytest.mark.crd("v2.2")
def test_cancel_deletes_the_job(cluster, namespace):
    b = backend(cluster, namespace)
    handle = b.submit(make_run())
    b.cancel(handle)
    assert b.client.get_trainjob(namespace, handle.name) is None
    b.cancel(handle)  # idempotent


@pytest.mark.crd("v2.2")
def test_detects_the_generation_from_the_served_crd(cluster, namespace):
    assert backend(cluster, namespace).generation() is SpecGeneration.V2_2


def _until(check, timeout=20):
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


@pytest.mark.crd("v2.2")
def test_non_deferrable_wait_streams_the_pod_log(cluster, namespace):
    b = backend(cluster, namespace)
    handle = b.submit(make_run())
    logs: list[str] = []
    result = {}
    waiter = threading.Thread(
        target=lambda: result.setdefault("r", b.wait(handle, on_log=logs.append, timeout_seconds=60))
    )
    # The pod "runs" and writes its log before the controller marks the job Running.
    cluster.pods[(namespace, f"{handle.name}-node-0-0-abcde")] = {
        "job": handle.name,
        "log": "[sft] step 1/2 loss 3.0\n[sft] step 2/2 loss 2.0",
    }
    waiter.start()
    _until(lambda: any("pending" in line for line in logs))
    cluster.drive(namespace, handle.name, "running", log="[sft] step 1/2 loss 3.0\n[sft] step 2/2 loss 2.0")
    _until(lambda: "[sft] step 2/2 loss 2.0" in logs)
    cluster.drive(namespace, handle.name, "complete", reason="JobsCompleted")
    waiter.join(30)
    assert result["r"].status is JobStatus.SUCCEEDED
    assert logs.count("[sft] step 2/2 loss 2.0") == 1  # streamed live, not copied again at the end
    assert b.client.get_trainjob(namespace, handle.name) is None  # deleted after success by default


@pytest.mark.crd("v2.2")
def test_async_wait_relists_after_410(cluster, namespace):
    import asyncio

    from kubernetes_asyncio import client as aclient

    from airflow_provider_sft.core.kube import AsyncTrainJobClient
    from airflow_provider_sft.core.waiting import await_trainjob

    handle = backend(cluster, namespace).submit(make_run())
    watched = []

    class StaleFirstWatch(AsyncTrainJobClient):
        def watch_trainjob(self, namespace, name, resource_version, timeout_seconds):
            watched.append(resource_version)
            return super().watch_trainjob(
                namespace, name, "1" if len(watched) == 1 else resource_version, timeout_seconds
            )

    async def main():
        config = aclient.Configuration()
        config.host = cluster.url
        async with aclient.ApiClient(config) as api:
            task = asyncio.ensure_future(
                await_trainjob(
                    StaleFirstWatch(api), namespace, handle.name, clock=SYSTEM_CLOCK, timeout_seconds=60
                )
            )
            while len(watched) < 2:
                await asyncio.sleep(0.05)
            await asyncio.to_thread(cluster.drive, namespace, handle.name, "complete", reason="JobsCompleted")
            return await asyncio.wait_for(task, 30)

    assert asyncio.run(main()).phase is JobPhase.SUCCEEDED


def test_secret_looking_envs_are_refused(cluster, namespace):
    with pytest.raises(InvalidParameterError, match="HF_TOKEN look") as info:
        backend(cluster, namespace).submit(make_run(envs=f"HF_TOKEN={TOKEN},MODE=fast"))
    assert TOKEN not in str(info.value)

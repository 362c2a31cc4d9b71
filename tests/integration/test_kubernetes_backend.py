"""The Kubernetes backend against a REAL API server (crdserver + etcd) with the UPSTREAM Trainer CRDs.

Pods, logs, events, secrets and the Trainer controller do not exist here: tests/k8s/fake_core.py
stands in for them (it says how), and drives TrainJob status through the real /status.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends.base import JobStatus
from airflow_provider_sft.core.backends.kubernetes import (
    Credentials,
    JobPhase,
    KubeApiError,
    KubernetesBackend,
    KubernetesConfig,
    SpecGeneration,
)
from airflow_provider_sft.core.backends.kubernetes.client import KubeClient
from airflow_provider_sft.core.backends.kubernetes.kinds import TRAINJOB
from airflow_provider_sft.core.backends.kubernetes.watch import follow_job
from airflow_provider_sft.core.clock import SYSTEM_CLOCK
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.run import TrainingRun
from tests.k8s.fake_core import KINDS as FAKE_KINDS

TOKEN = "hf_ThisIsTheSecretTokenValue42"
PULL = '{"auths": {"quay.io": {"auth": "c2VjcmV0OnB1bGw="}}}'


def make_run(name="sft-run-1", **values):
    params = SFTParams.parse(
        {"metadata_labels": "team=ml", "metadata_annotations": "owner=ml@example.com", **values}
    )
    return TrainingRun(name, params, "/workspace/dataset/train.jsonl", f"/workspace/runs/{name}")


IMAGE = "quay.io/example/sft-training:2.13"  # a PyTorchJob has no runtime to take its image from


def backend(cluster, namespace, generation=SpecGeneration.AUTO, credentials=None, **config):
    if config.get("job_kind") == "PyTorchJob":
        config.setdefault("image", IMAGE)
    return KubernetesBackend(
        config=KubernetesConfig.build(
            namespace=namespace, pvc_name="sft-workspace", spec_generation=generation, **config
        ),
        connect=cluster.connect,
        credentials=credentials or Credentials(),
        run_labels={
            c.LABEL_DAG_ID: "sft_pipeline",
            c.LABEL_RUN_ID: "manual__2026-11-25T20:00:00+00:00",
            c.LABEL_MAP_INDEX: "-1",  # an unmapped task
        },
    )


def stored(cluster, namespace, name, kind="TrainJob"):
    return cluster.custom().get_namespaced_custom_object(
        *FAKE_KINDS[kind][:2], namespace, FAKE_KINDS[kind][2], name
    )


def exists(cluster, namespace, name, kind="TrainJob") -> bool:
    from kubernetes.client.rest import ApiException

    try:
        stored(cluster, namespace, name, kind)
        return True
    except ApiException as exc:
        assert exc.status == 404
        return False


def trainjobs(cluster, namespace, kind="TrainJob"):
    return cluster.custom().list_namespaced_custom_object(
        *FAKE_KINDS[kind][:2], namespace, FAKE_KINDS[kind][2]
    )["items"]


def in_thread(fn):
    """Run ``fn`` in a thread; returns (thread, result dict)."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", fn()), daemon=True)
    thread.start()
    return thread, result


def manager_patch(job):
    return job["spec"]["runtimePatches"][0]


def patched_pod(job):
    replicated = manager_patch(job)["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    return replicated["template"]["spec"]["template"]


@pytest.mark.parametrize("release", ["v2.2.1", "v2.3.0"])
def test_v22_trainjob_is_admitted_and_nothing_is_pruned(fake_cluster, namespace, release):
    from tests.integration.conftest import use_release

    use_release(fake_cluster.server, release)
    handle = backend(fake_cluster, namespace).submit(make_run(), timeout_seconds=3600)
    job = stored(fake_cluster, namespace, handle.name)
    patch = manager_patch(job)
    assert (
        patch["manager"] == "airflow-provider-sft/sft-train-operator"
    )  # domain-prefixed, as the webhook wants
    pod = patched_pod(job)
    assert pod["metadata"]["labels"]["team"] == "ml"
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "sft-workspace"
    assert pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == "/workspace"
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 1 and "numProcPerNode" not in trainer  # "auto": the runtime decides
    assert trainer["resourcesPerNode"]["limits"] == {"cpu": "4", "memory": "64Gi", "nvidia.com/gpu": "1"}
    assert job["spec"]["runtimeRef"] == {
        "name": "torch-distributed",  # a runtime every upstream install has
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
    }
    assert job["spec"]["activeDeadlineSeconds"] == 3601  # the run's timeout, enforced by the Trainer too
    labels = job["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "airflow-provider-sft"
    # Sanitised values keep a hash of the original (the API server admitted them as label values):
    # an unmapped task's map index -1 is not labelled as map index 1.
    assert labels["airflow-provider-sft/run-id"].startswith("manual__2026-11-25T20-00-00-00-00-")
    assert labels["airflow-provider-sft/map-index"] not in ("1", "-1", "")


@pytest.mark.trainer("v2.1.0")
def test_v21_trainjob_is_created_with_pod_template_overrides(cluster, namespace):
    handle = backend(cluster, namespace).submit(
        make_run(resource_num_procs_per_worker=2, resource_gpu_per_worker=2), timeout_seconds=60
    )
    job = stored(cluster, namespace, handle.name)
    override = job["spec"]["podTemplateOverrides"][0]
    assert override["targetJobs"] == [{"name": "node"}]
    assert override["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "sft-workspace"
    assert job["spec"]["labels"] == {"team": "ml"}
    assert job["spec"]["trainer"]["numProcPerNode"] == 2
    assert "runtimePatches" not in job["spec"] and "activeDeadlineSeconds" not in job["spec"]


@pytest.mark.parametrize(
    ("release", "generation", "unknown"),
    [
        ("v2.2.1", SpecGeneration.V2_1, "spec.podTemplateOverrides"),
        ("v2.3.0", SpecGeneration.V2_1, "spec.podTemplateOverrides"),
        ("v2.1.0", SpecGeneration.V2_2, "spec.runtimePatches"),
    ],
)
def test_wrong_generation_is_rejected_not_silently_pruned(
    fake_cluster, namespace, release, generation, unknown
):
    from tests.integration.conftest import use_release

    use_release(fake_cluster.server, release)
    with pytest.raises(KubeApiError, match=rf'400 .*unknown field \\?"{unknown}\\?"') as info:
        backend(fake_cluster, namespace, generation).submit(make_run())
    assert info.value.status == 400
    assert trainjobs(fake_cluster, namespace) == [] and not fake_cluster.secrets_in(namespace)


@pytest.mark.trainer("v2.1.0")
def test_a_v21_cluster_whose_crd_cannot_be_read_is_told_to_set_spec_generation(cluster, namespace):
    """A namespaced service account may not read CRDs: ``auto`` then assumes v2.2, and the v2.1
    API server refuses spec.runtimePatches. The error says which spec_generation to set."""
    crd = "/customresourcedefinitions/trainjobs.trainer.kubeflow.org"
    cluster.forbidden = crd  # FAKE RBAC in front of the real API server: the CRD read gets a 403
    try:
        with pytest.raises(KubeApiError) as info:
            backend(cluster, namespace).submit(make_run())
    finally:
        cluster.forbidden = ""
    assert ("GET", f"/apis/apiextensions.k8s.io/v1{crd}") in cluster.requests
    assert info.value.status == 400
    message = str(info.value)
    assert re.search(r'unknown field \\?"spec.runtimePatches', message)  # the real server's words
    assert "spec_generation='v2.1'" in message and "customresourcedefinitions" in message
    assert trainjobs(cluster, namespace) == [] and not cluster.secrets_in(namespace)
    # ... and with the setting it names, the same run is admitted.
    backend(cluster, namespace, SpecGeneration.V2_1).submit(make_run())
    assert [job["metadata"]["name"] for job in trainjobs(cluster, namespace)] == [make_run().name]


def test_server_side_validation_errors_are_surfaced_with_the_field(cluster, namespace):
    with pytest.raises(KubeApiError) as info:
        bad = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": "a"}}}
        backend(cluster, namespace, affinity=bad).submit(make_run())
    assert info.value.status == 422
    assert "nodeSelectorTerms" in str(info.value)
    assert not cluster.secrets_in(namespace)  # nothing half-created


def test_a_missing_runtime_is_named_with_those_that_exist_and_nothing_is_created(cluster, namespace):
    b = backend(cluster, namespace, runtime_name="training-hub", credentials=Credentials(hf_token=TOKEN))
    with pytest.raises(InvalidParameterError) as info:
        b.submit(make_run())
    message = str(info.value)
    assert "runtime_name: ClusterTrainingRuntime 'training-hub' does not exist" in message
    assert "available: torch-distributed" in message
    assert trainjobs(cluster, namespace) == [] and not cluster.secrets_in(namespace)


def test_a_namespaced_runtime_is_read_from_the_jobs_namespace(cluster, namespace):
    with pytest.raises(
        InvalidParameterError,
        match=f"TrainingRuntime 'torch-distributed' does not exist in namespace {namespace}; there is no TrainingRuntime",
    ):
        backend(cluster, namespace, runtime_kind="TrainingRuntime").submit(make_run())
    runtime = cluster.custom().get_cluster_custom_object(
        c.TRAINER_GROUP, c.TRAINER_VERSION, "clustertrainingruntimes", "torch-distributed"
    )
    body = {**runtime, "kind": "TrainingRuntime", "metadata": {"name": "team-torch", "namespace": namespace}}
    cluster.custom().create_namespaced_custom_object(
        c.TRAINER_GROUP, c.TRAINER_VERSION, namespace, "trainingruntimes", body
    )
    handle = backend(cluster, namespace, runtime_kind="TrainingRuntime", runtime_name="team-torch").submit(
        make_run()
    )
    assert stored(cluster, namespace, handle.name)["spec"]["runtimeRef"]["kind"] == "TrainingRuntime"


def test_admission_rules_run_against_the_real_runtime(cluster, namespace):
    """A runtime without a ``node`` job (a custom one) cannot take our patch: refused before create."""
    runtime = cluster.custom().get_cluster_custom_object(
        c.TRAINER_GROUP, c.TRAINER_VERSION, "clustertrainingruntimes", "torch-distributed"
    )
    runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["name"] = "trainer"
    body = {
        "apiVersion": runtime["apiVersion"],
        "kind": "TrainingRuntime",
        "spec": runtime["spec"],
        "metadata": {"name": "custom", "namespace": namespace},
    }
    cluster.custom().create_namespaced_custom_object(
        c.TRAINER_GROUP, c.TRAINER_VERSION, namespace, "trainingruntimes", body
    )
    with pytest.raises(InvalidParameterError) as info:
        backend(cluster, namespace, runtime_kind="TrainingRuntime", runtime_name="custom").submit(
            make_run(envs="PET_NODE_RANK=3")
        )
    errors = info.value.errors
    assert (
        "'node' is not among the replicated jobs of TrainingRuntime 'custom' (trainer)"
        in errors["spec.runtimePatches"]
    )
    assert "[PET_NODE_RANK]" in errors["spec.trainer.env"]
    assert trainjobs(cluster, namespace) == []


def test_queue_labels_and_scheduling_hints_reach_the_job_and_its_pods(cluster, namespace):
    b = backend(
        cluster,
        namespace,
        job_labels="kueue.x-k8s.io/queue-name=gpu-queue,kueue.x-k8s.io/priority-class=high",
        job_annotations={"team.example.com/cost-center": "ml-42"},
        tolerations='[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
        node_selector="nvidia.com/gpu.product=H100",
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                    ]
                }
            }
        },
        shm_size="16Gi",
        service_account="trainer",
    )
    job = stored(cluster, namespace, b.submit(make_run()).name)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["metadata"]["annotations"]["team.example.com/cost-center"] == "ml-42"
    pod = patched_pod(job)["spec"]
    assert (
        "kueue.x-k8s.io/queue-name" not in patched_pod(job)["metadata"]["labels"]
    )  # the job's, not the pods'
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert pod["serviceAccountName"] == "trainer"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]


def test_a_priority_class_the_api_cannot_set_is_refused_with_what_to_do(cluster, namespace):
    with pytest.raises(
        InvalidParameterError, match="priority_class_name: the TrainJob API has no field"
    ) as info:
        backend(cluster, namespace, priority_class_name="high-priority").submit(make_run())
    assert "kueue.x-k8s.io/priority-class" in str(info.value)
    assert trainjobs(cluster, namespace) == []


def test_duplicate_submit_reattaches(cluster, namespace, kind):
    b = backend(cluster, namespace, job_kind=kind)
    first = b.submit(make_run())
    metadata = stored(cluster, namespace, first.name, kind)["metadata"]
    uid = metadata["uid"]
    assert first.created == metadata["creationTimestamp"]  # the time to the first step counts from it
    again = b.submit(make_run())
    assert again == first  # created too: the attached job's own creation
    assert stored(cluster, namespace, first.name, kind)["metadata"]["uid"] == uid
    assert len(trainjobs(cluster, namespace, kind)) == 1


def test_a_failed_job_is_deleted_and_submitted_again(cluster, namespace, kind):
    b = backend(cluster, namespace, job_kind=kind)
    handle = b.submit(make_run())
    uid = stored(cluster, namespace, handle.name, kind)["metadata"]["uid"]
    cluster.drive(
        namespace, handle.name, "failed", reason="JobsFailed", message="node-0 OOMKilled", kind=kind
    )
    result = b.poll(handle)
    assert result.status is JobStatus.FAILED and "node-0 OOMKilled" in result.message
    assert result.message.startswith(f"{kind} {namespace}/{handle.name} failed")
    b.submit(make_run())
    assert stored(cluster, namespace, handle.name, kind)["metadata"]["uid"] != uid


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
        "key": "HF_TOKEN",
    }
    secret = cluster.secrets[(namespace, f"{handle.name}-secrets")]
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    assert (
        secret["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    )  # garbage-collected with it
    assert patched_pod(job)["spec"]["imagePullSecrets"] == [{"name": f"{handle.name}-secrets"}]


def test_oci_models_are_rejected_before_anything_is_sent(cluster, namespace):
    with pytest.raises(InvalidParameterError, match="oci:// base models are not supported yet"):
        backend(cluster, namespace).submit(make_run(base_model="oci://quay.io/models/granite:1"))


@pytest.mark.parametrize(
    ("credentials", "warned"),
    [
        pytest.param(Credentials(), True, id="no-token"),
        pytest.param(Credentials(hf_token=TOKEN), False, id="token"),
    ],
)
def test_a_hub_base_model_without_a_token_is_warned_about(cluster, namespace, caplog, credentials, warned):
    """The pods download it: a gated model would fail there, minutes later. Said once, no value."""
    with caplog.at_level("WARNING", logger="airflow_provider_sft"):
        backend(cluster, namespace, credentials=credentials).submit(make_run(base_model="org/gated-model"))
    warnings = [r.getMessage() for r in caplog.records if "without a token" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)
    assert all("hf_conn_id" in w and "HF_TOKEN" in w for w in warnings)
    assert TOKEN not in caplog.text


def test_resources_that_disagree_with_the_parameters_are_refused_by_the_preflight(cluster, namespace):
    """Checked before anything is read from or sent to the cluster (the KFP shim preflights first)."""
    b = backend(cluster, namespace, resources={"limits": {"cpu": "16"}})
    with pytest.raises(
        InvalidParameterError, match=re.escape("resources.limits.cpu: '16' disagrees with '4'")
    ):
        b.preflight(make_run())


def _until(check, timeout=20):
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def follow(cluster, namespace, name, **kwargs):
    async def main():
        async with cluster.connect() as kube:
            return await follow_job(kube, TRAINJOB, namespace, name, clock=SYSTEM_CLOCK, **kwargs)

    return asyncio.run(main())


def test_status_transitions_pending_is_not_running_and_the_failure_reason(cluster, namespace):
    b = backend(cluster, namespace)
    handle = b.submit(make_run())
    seen = []
    waiter, result = in_thread(
        lambda: follow(cluster, namespace, handle.name, timeout_seconds=60, on_state=seen.append)
    )
    _until(lambda: seen)
    cluster.drive(namespace, handle.name, "suspended", reason="Suspended", message="queued by Kueue")
    _until(lambda: seen[-1].phase is JobPhase.SUSPENDED)
    cluster.drive(namespace, handle.name, "pending")  # pods exist (active) but none is ready
    _until(lambda: seen[-1].reason == "PodsNotReady")
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
        JobPhase.PENDING,
        JobPhase.RUNNING,
        JobPhase.FAILED,
    ]
    from airflow_provider_sft.core.backends.kubernetes import result_of

    failed = result_of(namespace, handle.name, result["value"])
    logs = []
    final = b.complete(handle, failed, on_log=logs.append)
    assert final.status is JobStatus.FAILED
    assert (
        final.message
        == f"TrainJob {namespace}/{handle.name} failed: JobsFailed: node-0 exited with code 1; the pod reported: CUDA out of memory"
    )
    assert logs[-1] == "ERROR: CUDA out of memory"  # the pod log tail reaches the task log
    assert not exists(cluster, namespace, handle.name)  # deleted on failure


def test_a_pending_job_reports_the_scheduler_and_times_out_with_it(cluster, namespace):
    b = backend(cluster, namespace, start_timeout_seconds=3, credentials=Credentials(hf_token=TOKEN))
    handle = b.submit(make_run())
    cluster.drive(namespace, handle.name, "pending")
    pod = cluster.add_pod(namespace, handle.name, phase="Pending")
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."
    cluster.add_event(namespace, "Pod", pod, "FailedScheduling", message)
    logs: list[str] = []
    result = b.wait(handle, on_log=logs.append, timeout_seconds=60)
    expected = f"pod {pod}: FailedScheduling: {message}"
    assert f"TrainJob {handle.name} not running yet: {expected}" in logs  # in the task log while it waits
    assert result.status is JobStatus.TIMED_OUT
    assert result.message == f"TrainJob {namespace}/{handle.name} did not start within 3s ({expected})"
    assert not exists(cluster, namespace, handle.name) and not cluster.secrets_in(namespace)


def test_image_pull_backoff_is_reported(cluster, namespace):
    b = backend(cluster, namespace, start_timeout_seconds=2)
    handle = b.submit(make_run())
    cluster.drive(namespace, handle.name, "pending")
    cluster.add_pod(namespace, handle.name, phase="Pending", waiting="ImagePullBackOff")
    result = b.wait(handle, on_log=lambda _l: None)
    assert "container node: ImagePullBackOff" in result.message


def test_a_job_left_suspended_by_its_queue_times_out_about_admission(cluster, namespace):
    b = backend(cluster, namespace, start_timeout_seconds=2, job_labels="kueue.x-k8s.io/queue-name=gpu")
    handle = b.submit(make_run())
    cluster.drive(namespace, handle.name, "suspended", reason="Suspended", message="queued by Kueue")
    result = b.wait(handle, on_log=lambda _l: None)
    assert result.status is JobStatus.TIMED_OUT
    assert "stayed suspended for 2s: no queue admitted it" in result.message
    assert "LocalQueue" in result.message


def test_keep_failed_jobs_for_debugging(cluster, namespace, kind):
    b = backend(cluster, namespace, keep_failed_jobs=True, job_kind=kind)
    handle = b.submit(make_run())
    cluster.drive(namespace, handle.name, "failed", reason="JobsFailed", kind=kind)
    result = b.poll(handle)
    assert result.status is JobStatus.FAILED
    assert b.complete(handle, result, on_log=lambda _l: None).status is JobStatus.FAILED
    assert exists(cluster, namespace, handle.name, kind)


def test_410_gone_relists_and_keeps_waiting(cluster, namespace):
    handle = backend(cluster, namespace).submit(make_run())
    watched = []

    class StaleFirstWatch(KubeClient):
        def watch_job(self, resource, namespace, name, resource_version, timeout_seconds, idle_timeout=None):
            watched.append(resource_version)
            stale = "1" if len(watched) == 1 else resource_version  # long compacted: 410 Gone
            return super().watch_job(resource, namespace, name, stale, timeout_seconds, idle_timeout)

    async def main():
        async with cluster.connect() as kube:
            task = asyncio.ensure_future(
                follow_job(
                    StaleFirstWatch(kube.api_client),
                    TRAINJOB,
                    namespace,
                    handle.name,
                    clock=SYSTEM_CLOCK,
                    timeout_seconds=60,
                )
            )
            while len(watched) < 2:
                await asyncio.sleep(0.05)
            await asyncio.to_thread(cluster.drive, namespace, handle.name, "complete", reason="JobsCompleted")
            return await asyncio.wait_for(task, 30)

    assert asyncio.run(main()).state.phase is JobPhase.SUCCEEDED


def test_timeout_deletes_the_job_and_its_secret(cluster, namespace, kind):
    b = backend(cluster, namespace, credentials=Credentials(hf_token=TOKEN), job_kind=kind)
    handle = b.submit(make_run())
    assert (namespace, f"{handle.name}-secrets") in cluster.secrets
    result = b.wait(handle, on_log=lambda _l: None, timeout_seconds=1)
    assert result.status is JobStatus.TIMED_OUT
    assert not exists(cluster, namespace, handle.name, kind)
    assert (namespace, f"{handle.name}-secrets") not in cluster.secrets


def test_cancel_deletes_the_job(cluster, namespace, kind):
    b = backend(cluster, namespace, job_kind=kind)
    handle = b.submit(make_run())
    assert exists(cluster, namespace, handle.name, kind)
    b.cancel(handle)  # what on_kill does
    assert not exists(cluster, namespace, handle.name, kind)
    b.cancel(handle)  # idempotent


def test_a_running_job_streams_its_rank0_log_and_succeeds(cluster, namespace, kind):
    b = backend(cluster, namespace, job_kind=kind)
    handle = b.submit(make_run())
    seen = []

    def finish():
        cluster.drive(namespace, handle.name, "running", log="[sft] step 1/2 loss 1.0\nnoise\n", kind=kind)
        cluster.drive(namespace, handle.name, "complete", reason="JobsCompleted", kind=kind)

    thread, _ = in_thread(finish)
    result = b.wait(handle, on_log=seen.append, timeout_seconds=60)
    thread.join()
    assert result.status is JobStatus.SUCCEEDED
    assert "[sft] step 1/2 loss 1.0" in seen and "noise" not in seen
    assert not exists(cluster, namespace, handle.name, kind)  # delete_on_success


@pytest.mark.parametrize(
    ("release", "generation"),
    [("v2.1.0", SpecGeneration.V2_1), ("v2.2.1", SpecGeneration.V2_2), ("v2.3.0", SpecGeneration.V2_3)],
)
def test_detects_the_generation_from_the_served_crd(fake_cluster, namespace, release, generation):
    from tests.integration.conftest import use_release

    use_release(fake_cluster.server, release)

    async def detect():
        async with fake_cluster.connect() as kube:
            return await backend(fake_cluster, namespace).generation(kube)

    assert asyncio.run(detect()) is generation


def test_non_deferrable_wait_streams_the_pod_log_once_the_container_starts(cluster, namespace):
    b = backend(cluster, namespace)
    handle = b.submit(make_run())
    logs: list[str] = []
    pod = cluster.add_pod(
        namespace,
        handle.name,
        phase="Pending",
        waiting="ContainerCreating",
        log="[sft] step 1/2 loss 3.0\n[sft] step 2/2 loss 2.0",
    )
    waiter, result = in_thread(lambda: b.wait(handle, on_log=logs.append, timeout_seconds=60))
    _until(lambda: any("pending" in line for line in logs))
    cluster.drive(namespace, handle.name, "running")  # ready, but the log still answers 400 for a moment
    import time

    time.sleep(1)
    cluster.pods[(namespace, pod)].update(waiting=None, phase="Running")
    _until(lambda: "[sft] step 2/2 loss 2.0" in logs)
    cluster.drive(namespace, handle.name, "complete", reason="JobsCompleted")
    waiter.join(30)
    assert result["value"].status is JobStatus.SUCCEEDED
    assert logs.count("[sft] step 2/2 loss 2.0") == 1  # streamed live, not copied again at the end
    assert not any("Log streaming stopped" in line for line in logs)  # the 400 was waited out
    assert not exists(cluster, namespace, handle.name)  # deleted after success by default


def test_secret_looking_envs_are_refused(cluster, namespace):
    with pytest.raises(InvalidParameterError, match="HF_TOKEN look") as info:
        backend(cluster, namespace).submit(make_run(envs=f"HF_TOKEN={TOKEN},MODE=fast"))
    assert TOKEN not in str(info.value)


def test_the_pod_program_travels_in_a_configmap_the_job_owns(cluster, namespace):
    from airflow_provider_sft.core.backends.kubernetes.program import program_digest

    b = backend(cluster, namespace)
    handle = b.submit(make_run())
    job = stored(cluster, namespace, handle.name)
    assert job["spec"]["trainer"]["command"] == [
        "python",
        "/opt/airflow-provider-sft/program.pyz",
        "train",
        "/opt/airflow-provider-sft/config.json",
    ]
    assert "pip install" not in json.dumps(job["spec"])  # nothing is installed when the pod starts
    configmap = cluster.configmaps[(namespace, f"{handle.name}-program")]
    assert configmap["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert configmap["metadata"]["annotations"]["airflow-provider-sft/program-sha256"] == program_digest()
    config = json.loads(configmap["data"]["config.json"])
    assert config["name"] == handle.name and config["attempt"]  # the run config, beside the program
    b.cancel(handle)
    assert cluster.configmaps_in(namespace) == [] and not exists(cluster, namespace, handle.name)


def test_a_long_log_line_is_streamed_whole(cluster, namespace, tmp_path):
    """A step's result line can be longer than aiohttp's 128 KiB line limit."""
    import asyncio

    log = tmp_path / "pod.log"
    log.write_text("start\n" + "x" * 300_000 + "\nend\n")
    cluster.pods[(namespace, "job-node-0-0-abcde")] = {"job": "job", "log": log, "phase": "Succeeded"}

    from airflow_provider_sft.core.backends.kubernetes.logs import split_timestamp

    async def read() -> list[str]:
        async with cluster.connect() as kube:
            return [
                split_timestamp(line)[1]
                async for line in kube.stream_log(namespace, "job-node-0-0-abcde", c.NODE)
            ]

    assert asyncio.run(read()) == ["start", "x" * 300_000, "end"]


@pytest.mark.parametrize("how", ["reset", "end"], ids=["api-server-restart", "idle-timeout"])
def test_a_log_stream_cut_mid_run_is_resumed_and_every_line_reaches_the_task_log_once(
    cluster, namespace, kind, how, tmp_path
):
    """The stream of a running container is cut: dropped (an API server restarting) or ended
    cleanly (a proxy's idle timeout). The follower resumes at sinceTime, the backfill at the end
    adds what is left, and the failure carries the pod's ERROR: line."""
    import time

    b = backend(cluster, namespace, job_kind=kind)
    handle = b.submit(make_run())
    pod = f"{handle.name}-master-0" if kind == "PyTorchJob" else f"{handle.name}-node-0-0-abcde"
    log = tmp_path / "pod.log"  # the container's output, written as it runs
    log.write_text("")
    cluster.pods[(namespace, pod)] = {"job": handle.name, "log": log, "phase": "Running"}
    steps = [f"[sft] step {i}/12 loss {12 - i}.0" for i in range(1, 13)]

    def container():
        cluster.drive(namespace, handle.name, "running", kind=kind)
        for step in steps:
            with log.open("a") as out:
                out.write(f"{step}\ntorch: a line the task log does not show\n")
            time.sleep(0.25)
        with log.open("a") as out:
            out.write("Traceback (most recent call last):\nERROR: CUDA out of memory\n")
        time.sleep(0.3)
        cluster.drive(
            namespace, handle.name, "failed", reason="JobsFailed", message="node 0 exited 1", kind=kind
        )

    cluster.cut_log_streams(after_lines=5, how=how)
    try:
        thread, _ = in_thread(container)
        seen: list[str] = []
        result = b.wait(handle, on_log=seen.append, timeout_seconds=120)
        thread.join(30)
    finally:
        cluster.cut_after = None
    assert cluster.pods[(namespace, pod)].get("cut")  # the stream was cut while the container ran
    assert [line for line in seen if line.startswith("[sft] step")] == steps  # each once, in order
    assert seen.count("ERROR: CUDA out of memory") == 1
    assert result.status is JobStatus.FAILED
    assert result.message.endswith(
        "failed: JobsFailed: node 0 exited 1; the pod reported: CUDA out of memory"
    )
    assert not any("Log streaming stopped" in line for line in seen)

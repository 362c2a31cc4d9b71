"""PyTorchJob manifests (kubeflow-training's models) and what a PyTorchJob's status means."""

from __future__ import annotations

import pytest

from airflow_provider_sft.core.backends.kubernetes.config import KubernetesConfig
from airflow_provider_sft.core.backends.kubernetes.manifest import step_work, training_work
from airflow_provider_sft.core.backends.kubernetes.pytorchjob import build_pytorchjob
from airflow_provider_sft.core.backends.kubernetes.status import JobPhase, classify_job_status
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.run import TrainingRun

IMAGE = "quay.io/example/sft-training:2.13"


def config(**values):
    return KubernetesConfig.build(namespace="ml", pvc_name="ws", job_kind="PyTorchJob", image=IMAGE, **values)


def run(**params):
    return TrainingRun("r1", SFTParams.parse(params), "/workspace/d.jsonl", "/workspace/runs/r1")


def test_master_and_workers_run_the_program_with_the_runs_resources_and_volumes():
    params = {"resource_num_workers": 3, "resource_gpu_per_worker": 2, "resource_num_procs_per_worker": 2}
    job = build_pytorchjob(
        training_work(run(**params), config(), labels={"a": "b"}), config(), active_deadline_seconds=600
    )
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    spec = job["spec"]
    replicas = spec["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 2)
    assert spec["nprocPerNode"] == "2"
    assert spec["runPolicy"] == {"backoffLimit": 0, "cleanPodPolicy": "None", "activeDeadlineSeconds": 600}
    pod = replicas["Master"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "pytorch" and container["image"] == IMAGE
    assert container["command"][-2:] == ["train", "/opt/airflow-provider-sft/config.json"]
    assert container["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456}]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert {v["name"] for v in pod["spec"]["volumes"]} >= {"workspace", "sft-program", "tmp"}
    assert pod["spec"]["restartPolicy"] == "Never" and pod["metadata"]["labels"]["a"] == "b"


def test_one_worker_is_a_master_alone_and_auto_procs_stay_auto():
    job = build_pytorchjob(step_work("r1-export", "export", config(), labels={}), config())
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    assert job["spec"]["nprocPerNode"] == "auto"


def test_queue_and_ttl_go_into_the_run_policy():
    cfg = config(
        scheduling_queue="gpu", ttl_seconds_after_finished=300, job_labels="kueue.x-k8s.io/queue-name=q"
    )
    job = build_pytorchjob(training_work(run(), cfg, labels={}), cfg)
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == {"queue": "gpu"}
    assert job["spec"]["runPolicy"]["ttlSecondsAfterFinished"] == 300
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "q"


def test_the_priority_class_goes_on_the_pods():
    cfg = config(priority_class_name="high")
    job = build_pytorchjob(training_work(run(), cfg, labels={}), cfg)
    assert job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["priorityClassName"] == "high"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"job_kind": "PyTorchJob", "image": IMAGE, "runtime_name": "training-hub"}, "runtime_name"),
        ({"job_kind": "PyTorchJob", "image": IMAGE, "runtime_kind": "TrainingRuntime"}, "runtime_kind"),
        ({"job_kind": "PyTorchJob", "image": IMAGE, "spec_generation": "v2.1"}, "spec_generation"),
        ({"scheduling_queue": "gpu"}, "scheduling_queue"),
        ({"ttl_seconds_after_finished": 60}, "ttl_seconds_after_finished"),
    ],
)
def test_a_setting_of_the_other_kind_is_refused_not_ignored(values, field):
    with pytest.raises(InvalidParameterError, match=f"{field}: applies to a"):
        KubernetesConfig.build(pvc_name="ws", **values)


def test_a_pytorchjob_needs_an_image():
    with pytest.raises(InvalidParameterError, match="image: is required for a PyTorchJob"):
        KubernetesConfig.build(pvc_name="ws", job_kind="PyTorchJob")


def test_without_the_extra_the_error_names_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_kubeflow(name, *args, **kwargs):
        if name.startswith("kubeflow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_kubeflow)
    with pytest.raises(InvalidParameterError, match=r"airflow-provider-sft\[pytorchjob\]"):
        build_pytorchjob(training_work(run(), config(), labels={}), config())


def conditions(*types):
    return {
        "kind": "PyTorchJob",
        "status": {"conditions": [{"type": t, "status": "True", "reason": t} for t in types]},
    }


@pytest.mark.parametrize(
    ("types", "phase"),
    [
        ((), JobPhase.PENDING),
        (("Created",), JobPhase.PENDING),
        (("Created", "Running"), JobPhase.RUNNING),
        (("Created", "Restarting"), JobPhase.PENDING),
        (("Created", "Suspended"), JobPhase.SUSPENDED),
        (("Created", "Running", "Succeeded"), JobPhase.SUCCEEDED),
        (("Created", "Running", "Failed"), JobPhase.FAILED),
    ],
)
def test_a_pytorchjobs_conditions_give_its_phase(types, phase):
    assert classify_job_status(conditions(*types)).phase is phase


def test_a_false_condition_is_not_a_state():
    job = {"kind": "PyTorchJob", "status": {"conditions": [{"type": "Running", "status": "False"}]}}
    assert classify_job_status(job).phase is JobPhase.PENDING

"""The component's TaskConfig passthrough reaches the TrainJob's node pods: forwarded, or refused.

With kfp's real ``dsl.TaskConfig``: every field the component declares as passed through
(resources, tolerations, node selector, affinity, env, volumes) ends up in the manifest;
a resource that disagrees with a ``training_resource_*`` parameter is an error naming both.
"""

from __future__ import annotations

import pytest
from kfp import dsl

from airflow_provider_sft.core.backends.kubernetes import KubernetesConfig, SpecGeneration
from airflow_provider_sft.core.backends.kubernetes.manifest import build_trainjob, training_work
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.run import TrainingRun
from airflow_provider_sft.kfp.runner import task_config_settings

PVC_PATH = "/kfp-workspace"


def task_config(**overrides):
    values = {
        "volumes": [
            {"name": "ws", "persistentVolumeClaim": {"claimName": "pipeline-ws"}},
            {"name": "cache", "persistentVolumeClaim": {"claimName": "hf-cache"}},
        ],
        "volume_mounts": [{"name": "ws", "mountPath": PVC_PATH}, {"name": "cache", "mountPath": "/cache"}],
        "env": [
            {"name": "HF_HOME", "value": "/cache/hf"},
            {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key"}}},
        ],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "node_selector": {"nvidia.com/gpu.product": "H100"},
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
        "resources": {"limits": {"nvidia.com/gpu": "1", "ephemeral-storage": "100Gi"}},
        **overrides,
    }
    return dsl.TaskConfig(**values)


def manifest(config, **params):
    run = TrainingRun("kfp-x", SFTParams.parse(params), f"{PVC_PATH}/d.jsonl", f"{PVC_PATH}/runs/kfp-x")
    return build_trainjob(training_work(run, config, labels={}), config, generation=SpecGeneration.V2_2)


def test_every_task_config_field_reaches_the_node_pods():
    settings = task_config_settings(task_config(), PVC_PATH)
    config = KubernetesConfig.build(workspace_mount_path=PVC_PATH, **settings)
    job = manifest(config)
    assert config.pvc_name == "pipeline-ws"  # the volume mounted at pvc_path is the workspace
    rj = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = rj["template"]["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["workspace", "sft-program", "tmp", "cache"]
    assert pod["containers"][0]["volumeMounts"] == [
        {"name": "workspace", "mountPath": PVC_PATH},
        {"name": "sft-program", "mountPath": "/opt/airflow-provider-sft", "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": "/cache"},
    ]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert "nodeAffinity" in pod["affinity"]
    env = {e["name"]: e for e in job["spec"]["trainer"]["env"]}
    assert env["HF_HOME"] == {
        "name": "HF_HOME",
        "value": "/cache/hf",
    }  # the TaskConfig's wins over our default
    assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "wandb"
    limits = job["spec"]["trainer"]["resourcesPerNode"]["limits"]
    assert limits["ephemeral-storage"] == "100Gi" and limits["nvidia.com/gpu"] == "1"


def test_a_resource_that_disagrees_with_a_training_parameter_is_refused():
    settings = task_config_settings(task_config(resources={"limits": {"cpu": "16"}}), PVC_PATH)
    config = KubernetesConfig.build(workspace_mount_path=PVC_PATH, **settings)
    with pytest.raises(InvalidParameterError) as info:
        manifest(config, resource_cpu_per_worker="8")
    assert info.value.errors == {
        "resources.limits.cpu": "'16' disagrees with '8' from resource_cpu_per_worker"
    }

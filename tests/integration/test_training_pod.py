"""The training pod as a cluster runs it: the TrainJob merged with the upstream runtime, each node
its own process with no network, a non-root UID, a read-only root and an image Python that has
torch and instructlab-training but not this provider (tests/k8s/standin.py, tests/k8s/sandbox.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends.kubernetes import KubernetesBackend, KubernetesConfig
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.results.metrics import read_step_records
from airflow_provider_sft.core.run import TrainingRun
from airflow_provider_sft.core.sample_data import bundled_dataset_path
from airflow_provider_sft.demo import DEMO_TRAINING
from tests.k8s import standin

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(standin.unavailable()), reason=str(standin.unavailable())),
]
CLAIM = "sft-workspace"
POD_ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture
def pvc(cluster, tmp_path, tiny_model) -> Path:
    """The workspace PVC, with the base model and a dataset on it (not this worker's directories)."""
    root = cluster.kubelet.add_pvc(CLAIM, tmp_path / "pvc")
    shutil.copytree(tiny_model, root / "models" / "tiny")
    (root / "dataset").mkdir()
    shutil.copy(bundled_dataset_path(), root / "dataset" / "train.jsonl")
    for path in [
        root / "models",
        root / "dataset",
        *(root / "models").rglob("*"),
        *(root / "dataset").rglob("*"),
    ]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # what the pod's UID may read
    return root


def training_run(name: str, **params) -> TrainingRun:
    values = {**DEMO_TRAINING, "num_epochs": 1, "base_model": "/workspace/models/tiny", **params}
    return TrainingRun(
        name=name,
        params=SFTParams.parse(values),
        dataset_path="/workspace/dataset/train.jsonl",
        output_dir=f"/workspace/runs/{name}",
    )


def backend(cluster, namespace) -> KubernetesBackend:
    return KubernetesBackend(
        config=KubernetesConfig.build(namespace=namespace, pvc_name=CLAIM), connect=cluster.connect
    )


def run(cluster, namespace, training: TrainingRun) -> tuple[list[int], list[str], object]:
    sft = backend(cluster, namespace)
    handle = sft.submit(training)
    codes = cluster.run_pods(namespace, training.name, extra_env=POD_ENV)
    lines: list[str] = []
    result = sft.wait(handle, on_log=lines.append)
    return codes, lines, result


def pod_log(cluster, namespace, job: str, rank: int) -> str:
    return next(
        info["log"].read_text()
        for (ns, name), info in cluster.pods.items()
        if ns == namespace and name.startswith(f"{job}-node-0-{rank}-")
    )


def test_the_stand_in_pod_is_what_a_cluster_gives(cluster, namespace, pvc):
    """No network, not root, HOME and / read-only, the PVC writable, torch and instructlab but no provider."""
    probe = (
        "import os, socket, importlib.util as u\n"
        "print('uid', os.getuid())\n"
        "print('provider', u.find_spec('airflow_provider_sft') is not None)\n"
        "print('pip', u.find_spec('pip') is not None)\n"
        "import torch, instructlab.training, transformers\n"
        "for path in ('/', os.environ['HOME'], '/workspace', '/tmp'):\n"
        "    print('writable', path, os.access(path, os.W_OK))\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 443), timeout=2)\n"
        "    print('network yes')\n"
        "except OSError:\n"
        "    print('network no')\n"
    )
    job = {
        "metadata": {"name": "probe"},
        "spec": {
            "runtimeRef": {"name": "torch-distributed"},
            "trainer": {"command": ["python", "-c", probe]},
            "runtimePatches": [],
        },
    }
    runtime = cluster.custom().get_cluster_custom_object(
        "trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", "torch-distributed"
    )
    job["spec"]["runtimePatches"] = [
        {
            "manager": "test/probe",
            "trainingRuntimeSpec": {
                "template": {
                    "spec": {
                        "replicatedJobs": [
                            {
                                "name": "node",
                                "template": {
                                    "spec": {
                                        "template": {
                                            "spec": {
                                                "volumes": [
                                                    {
                                                        "name": "w",
                                                        "persistentVolumeClaim": {"claimName": CLAIM},
                                                    },
                                                    {"name": "t", "emptyDir": {}},
                                                ],
                                                "containers": [
                                                    {
                                                        "name": "node",
                                                        "volumeMounts": [
                                                            {"name": "w", "mountPath": "/workspace"},
                                                            {"name": "t", "mountPath": "/tmp"},
                                                        ],
                                                    }
                                                ],
                                            }
                                        }
                                    }
                                },
                            }
                        ]
                    }
                }
            },
        }
    ]
    pods, container, hosts = standin.job_pods(job, runtime)
    assert cluster.kubelet.run(
        namespace, job["metadata"]["name"], pods, container=container, hosts=hosts
    ) == [0]
    log = pod_log(cluster, namespace, "probe", 0)
    assert "uid 1000770000" in log
    assert "provider False" in log and "pip False" in log
    assert "writable / False" in log and "writable /workspace True" in log and "writable /tmp True" in log
    assert "network no" in log


def test_two_cpu_nodes_train_one_model(cluster, namespace, pvc):
    training = training_run("two-nodes", resource_num_workers=2)
    codes, lines, result = run(cluster, namespace, training)
    node0, node1 = (pod_log(cluster, namespace, training.name, rank) for rank in (0, 1))
    assert codes == [0, 0], node0[-3000:] + node1[-3000:]
    assert result.succeeded, result.message
    # data processed once, by node 0; node 1 used its output
    assert "data processing:" in node0 and "data processing:" not in node1
    assert "using node 0's processed data" in node1
    assert "joining 2 nodes over gloo" in node0 and "joining 2 nodes over gloo" in node1
    run_dir = pvc / "runs" / training.name
    assert sorted(p.name for p in (run_dir / c.HF_FORMAT_DIR).iterdir()) == [
        "samples_235"
    ]  # one model, from node 0
    records, _ = read_step_records(run_dir / c.METRICS_FILE)
    losses = [r.loss for r in records]
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])
    assert "STAND-IN IMAGE: pip ran" not in node0 + node1
    assert any("[sft node 0/2] done in" in line for line in lines)  # node 0's log reached the task log


def _fails_with(cluster, namespace, training: TrainingRun, reason: str) -> None:
    codes, lines, result = run(cluster, namespace, training)
    assert codes == [1]
    errors = [line for line in lines if line.startswith("ERROR: ")]
    assert len(errors) == 1 and reason in errors[0], lines[-20:]
    assert not result.succeeded and reason in result.message  # what the task fails with
    assert "Traceback" not in "\n".join(lines)


def test_a_missing_base_model_is_named(cluster, namespace, pvc):
    training = training_run("no-model", base_model="/workspace/models/missing")
    _fails_with(cluster, namespace, training, "base_model /workspace/models/missing does not exist")


def test_an_unreadable_dataset_is_named(cluster, namespace, pvc):
    (pvc / "dataset" / "train.jsonl").chmod(0o600)  # root's, not the pod user's
    training = training_run("unreadable")
    _fails_with(cluster, namespace, training, "permission denied: /workspace/dataset/train.jsonl")


def test_a_read_only_pvc_is_named(cluster, namespace, pvc):
    pvc.chmod(0o555)
    try:
        training = training_run("read-only")
        _fails_with(cluster, namespace, training, "cannot write the run directory /workspace/runs/read-only")
    finally:
        pvc.chmod(0o2775)


@pytest.mark.trainer("v2.1.0")
def test_one_node_on_trainer_v21_through_pod_template_overrides(cluster, namespace, pvc):
    """The v2.1 spec (podTemplateOverrides) merged with the v2.1.0 runtime mounts the same volumes."""
    training = training_run("v21-node")
    codes, lines, result = run(cluster, namespace, training)
    assert codes == [0] and result.succeeded, lines[-20:]
    assert (pvc / "runs" / training.name / c.HF_FORMAT_DIR / "samples_235").is_dir()

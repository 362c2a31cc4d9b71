"""The training pod as a cluster runs it: the TrainJob merged with the upstream runtime, each node
its own process with no network, a non-root UID, a read-only root and an image Python that has
torch and instructlab-training but not this provider (tests/k8s/standin.py, tests/k8s/sandbox.py).
"""

from __future__ import annotations

import hashlib
import json
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


# --- the data prepared before the job, reused by fingerprint (#21) ----------------------------


def prepare(cluster, namespace, training: TrainingRun) -> tuple[dict, str]:
    """The ``prepare`` step as cluster mode runs it: a one-node job of the pod program next to the
    PVC (the stand-in kubelet runs it); its result and its pod's log."""
    cluster.auto_run(namespace, extra_env=POD_ENV)
    params = training.params
    config = {
        "dataset_path": training.dataset_path,
        "processed_dir": training.processed_data_dir,
        "base_model": params.base_model,
        "max_seq_len": params.max_seq_len,
        "effective_batch_size": params.effective_batch_size,
        "num_epochs": params.num_epochs,
        "max_dropped_fraction": training.max_dropped_fraction,
    }
    job = f"{training.name}-prep"
    result = backend(cluster, namespace).run_step("prepare", job, config, on_log=lambda line: None)
    return result, pod_log(cluster, namespace, job, 0)


def train(cluster, namespace, training: TrainingRun) -> tuple[list[str], object]:
    """Submit and follow the TrainJob while ``prepare``'s background kubelet runs its pods."""
    sft = backend(cluster, namespace)
    lines: list[str] = []
    result = sft.wait(sft.submit(training), on_log=lines.append)
    return lines, result


def test_the_job_reuses_the_data_prepared_before_it(cluster, namespace, pvc):
    training = training_run("reuse")
    prepared, step_log = prepare(cluster, namespace, training)
    assert prepared["report"]["kept_samples"] == 235, step_log[-3000:]
    assert "tokenizing /workspace/dataset/train.jsonl" in step_log

    lines, result = train(cluster, namespace, training)
    node0 = pod_log(cluster, namespace, training.name, 0)
    assert result.succeeded, node0[-3000:]
    assert (
        f"data prepared before the job (fingerprint {prepared['fingerprint_id']}) is reused, not processed "
        "again: 235 samples" in node0
    )
    assert "processing the data here" not in node0 and "data processing:" not in node0
    assert (pvc / "runs" / training.name / c.HF_FORMAT_DIR / "samples_235").is_dir()
    assert any("is reused, not processed again" in line for line in lines)  # in the task log too


def test_a_changed_dataset_is_processed_again_on_node_0(cluster, namespace, pvc):
    training = training_run("changed")
    prepare(cluster, namespace, training)
    dataset = pvc / "dataset" / "train.jsonl"
    samples = dataset.read_bytes().splitlines(keepends=True)
    dataset.write_bytes(b"".join(samples[:-1]))  # one sample fewer after the data was prepared

    _, result = train(cluster, namespace, training)
    node0 = pod_log(cluster, namespace, training.name, 0)
    assert result.succeeded, node0[-3000:]
    assert "[sft] processing the data here: the dataset changed (sha256)" in node0
    assert "is reused, not processed again" not in node0
    assert "data processing: 234/234 samples kept" in node0
    # node 0 prepared it anew: the next job with these inputs reuses it
    processed = pvc / "runs" / training.name / "data"
    recorded = json.loads((processed / "prepared.json").read_text())
    assert recorded["fingerprint"]["dataset_sha256"] == hashlib.sha256(dataset.read_bytes()).hexdigest()
    assert len((processed / c.PROCESSED_DATA_FILE).read_bytes().splitlines()) == 234


def test_two_nodes_reuse_the_prepared_data_and_neither_waits(cluster, namespace, pvc):
    training = training_run("reuse-two", resource_num_workers=2)
    prepared, _ = prepare(cluster, namespace, training)

    _, result = train(cluster, namespace, training)
    node0, node1 = (pod_log(cluster, namespace, training.name, rank) for rank in (0, 1))
    assert result.succeeded, node0[-3000:] + node1[-3000:]
    reused = f"data prepared before the job (fingerprint {prepared['fingerprint_id']}) is reused"
    assert f"[sft node 0/2] {reused}" in node0 and f"[sft node 1/2] {reused}" in node1
    for log in (node0, node1):
        assert "processing the data here" not in log and "data processing:" not in log
        assert "waiting for node 0" not in log and "node 0 processes it" not in log
    assert "joining 2 nodes over gloo" in node0 and "joining 2 nodes over gloo" in node1
    records, _ = read_step_records(pvc / "runs" / training.name / c.METRICS_FILE)
    assert len(records) == 30


def test_a_retry_after_the_gate_stopped_it_is_stopped_again(cluster, namespace, pvc):
    """Node 0's processing writes prepared.json before its gate fails: the retried job finds data
    that matches, and must apply the gate to it rather than train on what it refused."""
    training = training_run("gated", max_seq_len=60)  # the longer half of the samples is dropped
    gate = "more than max_dropped_fraction=0.02 allows"
    _fails_with(cluster, namespace, training, gate)
    assert (pvc / "runs" / training.name / "data" / "prepared.json").is_file()
    _fails_with(cluster, namespace, training, gate)  # the retry: a new TrainJob, the same run
    node0 = pod_log(cluster, namespace, training.name, 0)
    assert "is reused, not processed again" in node0 and "processing the data here" not in node0
    assert not (pvc / "runs" / training.name / c.HF_FORMAT_DIR).exists()

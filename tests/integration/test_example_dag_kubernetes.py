"""The example DAG with backend="kubernetes" through `airflow dags test`, against the REAL API server
with the upstream CRDs, the worker NOT mounting the PVC (workspace_mode="cluster").

Every TrainJob (dataset resolution, training, export) runs on the stand-in controller and kubelet
of tests/k8s/standin.py: merged with the upstream torch-distributed runtime, no network, a non-root
UID, an image Python that cannot import this provider, and the PVC a directory of its own.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.results.metrics import read_metrics_log
from airflow_provider_sft.demo import DEMO_TRAINING, EXAMPLE_DAGS, run_pipeline
from tests.integration.test_kubernetes_backend import trainjobs
from tests.k8s import standin

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(standin.unavailable()), reason=str(standin.unavailable())),
]
TOKEN = "hf_DagLevelSecretToken987"


@pytest.mark.parametrize(
    ("kind", "workers"),
    [("TrainJob", 1), ("PyTorchJob", 2)],
    ids=["trainjob", "pytorchjob-2-nodes"],
)
def test_example_dag_on_kubernetes_without_the_pvc_on_the_worker(
    cluster, namespace, k8s_connection, tiny_model, tmp_path, monkeypatch, kind, workers
):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    pvc = cluster.kubelet.add_pvc("sft-workspace", tmp_path / "pvc")
    shutil.copytree(tiny_model, pvc / "models" / "tiny")
    for path in [pvc / "models", *(pvc / "models").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    cluster.auto_run(namespace, extra_env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}, kind=kind)
    worker = tmp_path / "worker"  # the Airflow side: not the PVC
    conf = {
        **DEMO_TRAINING,
        "num_epochs": 1,
        "backend": "kubernetes",
        "base_model": "/workspace/models/tiny",  # a path in the pod, on the PVC
        "workspace": str(worker),
        "pvc_name": "sft-workspace",
        "job_kind": kind,
        "resource_num_workers": workers,
        **({"image": "quay.io/example/sft-training:2.13"} if kind == "PyTorchJob" else {}),
    }
    if (
        kind == "PyTorchJob"
    ):  # each pod's first log read (a stream or a tail) dropped midway, as by an API-server restart
        cluster.cut_log_streams(after_lines=3, how="reset")
    try:
        log = run_pipeline(worker, EXAMPLE_DAGS, conf, echo=False)
    finally:
        cluster.cut_after = None
    text = log.read_text()

    assert "state=success" in text, text[-5000:]
    # the logs were read from the program's container: a PyTorchJob's is "pytorch", and the stand-in
    # answers any other name with the API server's 400 ("container node is not valid for pod ...")
    assert "is not valid for pod" not in text and "Could not read the training pod log" not in text
    rank0 = re.findall(r"\[sft(?: node 0/2)?\] (step \d+/\d+[^\[]*)", text)
    assert rank0 and len(rank0) == len(set(rank0)), rank0  # every streamed line once, cut or not
    if kind == "PyTorchJob":
        assert any(info.get("cut") for (ns, _), info in cluster.pods.items() if ns == namespace)
    with sqlite3.connect(worker / "airflow" / "airflow.db") as db:
        rows = db.execute("SELECT task_id, key, value FROM xcom").fetchall()
    xcoms = {(task, key): json.loads(value) if isinstance(value, str) else value for task, key, value in rows}
    run = xcoms[("train", "output_dir")].removeprefix("/workspace/")
    # the dataset, the run and the model are on the PVC; nothing of them on the worker
    dataset = xcoms[("resolve_dataset", "path")]
    assert dataset.startswith("/workspace/runs/") and (pvc / dataset.removeprefix("/workspace/")).is_file()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(pvc / run / c.FINAL_MODEL_DIR)
    assert json.loads((pvc / run / c.METRICS_SUMMARY_FILE).read_text())["steps"] == 30
    assert (
        json.loads((pvc / c.LATEST_FILE).read_text())["model_path"] == f"/workspace/{run}/{c.FINAL_MODEL_DIR}"
    )
    assert not list(worker.rglob(c.FINAL_MODEL_DIR)) and not list(worker.rglob("train.jsonl"))
    # the loss chart reached the Airflow side, drawn from the export's XCom
    assert "Plotly" in (worker / run / c.LOSS_CHART_FILE).read_text()
    assert re.search(r"\[sft( node 0/2)?\] done in", text)  # the rank-0 pod log reached the task log
    # the deferred wait said the run's progress, from the rank-0 pod's step lines (the stand-in
    # controller pushes no trainerStatus), up to its last step
    said = re.findall(r"progress (\d+)%: step (\d+)/30, .*\(from pod log\)", text)
    assert said and said[-1] == ("100", "30"), said
    assert "STAND-IN IMAGE: pip ran" not in text
    assert trainjobs(cluster, namespace, kind) == []  # every job deleted after success
    assert cluster.secrets_in(namespace) == [] and cluster.configmaps_in(namespace) == []
    assert f"Created {kind} {namespace}/" in text and "for the export step" in text
    logs = cluster_logs(cluster, namespace)
    if workers > 1:  # one job of two nodes over gloo: the data prepared before it, neither node processes
        for node in ("0/2", "1/2"):
            assert f"[sft node {node}] data prepared before the job (fingerprint" in logs
    else:
        assert "[sft] data prepared before the job (fingerprint" in logs
    assert "processing the data here" not in logs and "waiting for node 0" not in logs
    assert "for the prepare step" in text  # tokenized in a CPU job next to the PVC
    assert TOKEN not in text
    stored = json.dumps(list(xcoms.values()))
    assert TOKEN not in stored
    assert xcoms[("export_model", "metrics")]["steps"] == 30
    assert len(xcoms[("export_model", "steps")]) == 30
    job = xcoms[("train", "training_job")]
    assert job["backend"] == "kubernetes" and job["namespace"] == namespace
    # the API server's creationTimestamp reached the export pod: the first step is timed from it
    assert xcoms[("train", "job_created")] == job["created"] and job["created"].endswith("Z")
    efficiency = json.loads((pvc / run / c.METRICS_SUMMARY_FILE).read_text())["efficiency"]
    assert efficiency["time_to_first_step_from"] == "job_created"
    assert 0 < efficiency["time_to_first_step_seconds"] < 600 and efficiency["tokens_per_second"] > 0
    assert read_metrics_log(pvc / run / c.METRICS_FILE).facts["num_nodes"] == workers  # node 0's facts line
    assert '<table id="sft-efficiency"' in (worker / run / c.LOSS_CHART_FILE).read_text()


def test_example_dag_on_kubernetes_with_the_pvc_mounted_on_the_worker(
    cluster, namespace, k8s_connection, tiny_model, tmp_path
):
    """workspace_mode="shared": the worker mounts the PVC at `workspace`, the pods at the same path."""
    shared = cluster.kubelet.add_pvc("sft-workspace", tmp_path / "pvc")
    shutil.copytree(tiny_model, shared / "models" / "tiny")
    for path in [shared / "models", *(shared / "models").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    cluster.auto_run(namespace, extra_env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    conf = {
        **DEMO_TRAINING,
        "num_epochs": 1,
        "backend": "kubernetes",
        "workspace_mode": "shared",
        "base_model": str(shared / "models" / "tiny"),
        "workspace": str(shared),
        "pvc_name": "sft-workspace",
    }
    log = run_pipeline(shared, EXAMPLE_DAGS, conf, echo=False)
    text = log.read_text()
    assert "state=success" in text, text[-5000:]
    assert "for the resolve step" not in text and "for the export step" not in text  # ran in the tasks
    latest = json.loads((shared / c.LATEST_FILE).read_text())
    run = Path(latest["run_dir"])
    assert (Path(latest["model_path"]) / "model.safetensors").exists() and run.parent == shared / c.RUNS_DIR
    assert json.loads(Path(latest["metrics_path"]).read_text())["steps"] == 30
    assert "Plotly" in (run / c.LOSS_CHART_FILE).read_text()
    assert trainjobs(cluster, namespace) == []


def cluster_logs(cluster, namespace) -> str:
    """Every pod log the stand-in kubelet kept in ``namespace``."""
    return "".join(
        Path(info["log"]).read_text()
        for (ns, _), info in cluster.pods.items()
        if ns == namespace and isinstance(info.get("log"), Path) and info["log"].exists()
    )

"""The data gate through real Airflow: a dataset of which 40% is too long stops the DAG run in its
``prepare_data`` task, with the counts and a ``max_seq_len`` that would keep 99%, before any
training job exists: on the local backend, and against the REAL API server with the upstream CRDs
(no TrainJob, PyTorchJob, ConfigMap or Secret is ever POSTed for the training)."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.sample_data import bundled_dataset_path
from airflow_provider_sft.demo import DEMO_TRAINING, EXAMPLE_DAGS, run_pipeline
from tests.k8s import standin

pytestmark = pytest.mark.slow
SAMPLES, TOO_LONG = 100, 40


def dataset_with_long_samples(path: Path) -> Path:
    """100 bundled samples, 40 of them with an assistant reply repeated far past max_seq_len=512."""
    rows = [json.loads(line) for line in bundled_dataset_path().read_text().splitlines() if line.strip()]
    out = []
    for index, row in enumerate(rows[:SAMPLES]):
        if index % 5 in (1, 3):  # 40 of 100, spread through the file
            row["messages"][-1]["content"] = " ".join([row["messages"][-1]["content"]] * 150)
        out.append(json.dumps(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")
    return path


def task_states(airflow_db: Path) -> dict[str, str]:
    with sqlite3.connect(airflow_db) as db:
        return dict(db.execute("SELECT task_id, state FROM task_instance").fetchall())


def assert_stopped_by_the_gate(log_text: str, states: dict[str, str]) -> None:
    assert states["prepare_data"] == "failed", states
    assert states["train"] == "upstream_failed" and states["export_model"] == "upstream_failed"
    message = re.search(r"the data would lose (\d+) of (\d+) samples \(([\d.]+)%\)[^\n]*", log_text)
    assert message, log_text[-4000:]
    assert (int(message[1]), int(message[2])) == (TOO_LONG, SAMPLES)
    suggested = re.search(r"max_seq_len=(\d+) would keep 99% of the samples", message[0])
    assert suggested and int(suggested[1]) > 512
    assert "max_dropped_fraction=0.02" in message[0]
    assert "Milk is white" not in log_text  # no training sample in the task log


def test_gate_stops_the_local_run_before_training(tiny_model, tmp_path):
    workspace = tmp_path / "ws"
    data = dataset_with_long_samples(workspace / "data" / "long.jsonl")
    conf = {**DEMO_TRAINING, "base_model": str(tiny_model), "workspace": str(workspace), "dataset": str(data)}
    with pytest.raises(SystemExit):
        run_pipeline(workspace, EXAMPLE_DAGS, conf, echo=False)
    text = (workspace / "dags-test.log").read_text()
    assert_stopped_by_the_gate(text, task_states(workspace / "airflow" / "airflow.db"))
    (run,) = (workspace / c.RUNS_DIR).iterdir()
    assert not (run / c.RUN_CONFIG_FILE).exists() and not (run / c.METRICS_FILE).exists()  # never trained
    assert json.loads((run / "data" / "prepared.json").read_text())["report"]["dropped_too_long"] == TOO_LONG
    assert_results_tab_shows_the_stopped_runs_data(workspace / "airflow" / "airflow.db")


def assert_results_tab_shows_the_stopped_runs_data(airflow_db: Path) -> None:
    """The *Training results* page of the failed prepare task, from the run's real XComs."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from airflow_provider_sft.plugin.results import _dag_run_results, find_data, find_results, render_page

    with sqlite3.connect(airflow_db) as db:
        ((dag_id, run_id),) = db.execute("SELECT dag_id, run_id FROM dag_run").fetchall()
    with Session(create_engine(f"sqlite:///{airflow_db}")) as session:
        results, reports = _dag_run_results(session, dag_id, run_id, -1)
    run, found = find_results(results, "prepare_data", reports)
    data = find_data(results, reports, "prepare_data", run, found)
    assert data is not None and data.stopped and data.report.dropped_too_long == TOO_LONG
    page = render_page("prepare_data", run, found, data)
    assert "Training did not run" in page and 'id="sft-data-chart"' in page
    assert f"{TOO_LONG} of {SAMPLES} samples would be dropped" in page
    assert "Milk is white" not in page  # no training sample on the page


needs_cluster = pytest.mark.skipif(bool(standin.unavailable()), reason=str(standin.unavailable()))


def creates(cluster, namespace: str) -> list[str]:
    """The kinds POSTed into ``namespace`` through the API server (every request is recorded)."""
    return [
        path.rsplit("/", 1)[-1]
        for method, path in cluster.requests
        if method == "POST" and f"/namespaces/{namespace}/" in path
    ]


@needs_cluster
def test_gate_creates_nothing_on_the_cluster_in_shared_mode(
    cluster, namespace, k8s_connection, tiny_model, tmp_path
):
    """The worker mounts the PVC: prepare runs in the task, and the gate stops the run before any request
    creates anything."""
    shared = cluster.kubelet.add_pvc("sft-workspace", tmp_path / "pvc")
    shutil.copytree(tiny_model, shared / "models" / "tiny")
    data = dataset_with_long_samples(shared / "data" / "long.jsonl")
    cluster.auto_run(namespace, extra_env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    conf = {
        **DEMO_TRAINING,
        "backend": "kubernetes",
        "workspace_mode": "shared",
        "base_model": str(shared / "models" / "tiny"),
        "workspace": str(shared),
        "dataset": str(data),
        "pvc_name": "sft-workspace",
    }
    with pytest.raises(SystemExit):
        run_pipeline(shared, EXAMPLE_DAGS, conf, echo=False)
    assert_stopped_by_the_gate(
        (shared / "dags-test.log").read_text(), task_states(shared / "airflow" / "airflow.db")
    )
    assert creates(cluster, namespace) == []
    assert cluster.secrets_in(namespace) == [] and cluster.configmaps_in(namespace) == []


@needs_cluster
def test_gate_stops_the_run_before_the_training_job_in_cluster_mode(
    cluster, namespace, k8s_connection, tiny_model, tmp_path
):
    """The worker does not mount the PVC: prepare runs as a one-node CPU job next to it; the training
    job is never created, and the step jobs are gone."""
    pvc = cluster.kubelet.add_pvc("sft-workspace", tmp_path / "pvc")
    shutil.copytree(tiny_model, pvc / "models" / "tiny")
    dataset_with_long_samples(pvc / "data" / "long.jsonl")
    for path in [pvc / "models", pvc / "data", *(pvc / "models").rglob("*"), *(pvc / "data").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    cluster.auto_run(namespace, extra_env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    worker = tmp_path / "worker"
    conf = {
        **DEMO_TRAINING,
        "backend": "kubernetes",
        "base_model": "/workspace/models/tiny",
        "workspace": str(worker),
        "dataset": "/workspace/data/long.jsonl",
        "pvc_name": "sft-workspace",
    }
    with pytest.raises(SystemExit):
        run_pipeline(worker, EXAMPLE_DAGS, conf, echo=False)
    text = (worker / "dags-test.log").read_text()
    assert_stopped_by_the_gate(text, task_states(worker / "airflow" / "airflow.db"))
    created = re.findall(r"Created TrainJob \S+ for the (\w+) step", text)
    assert created == ["resolve", "prepare"], created
    assert creates(cluster, namespace).count("trainjobs") == 2  # the two steps' jobs, no training job
    # the prepare job is sized for tokenizing (the operator's cpu and memory), the resolve job is not
    sizes = {
        info["pod"]["metadata"]["labels"][c.LABEL_COMPONENT]: container["resources"]
        for (ns, _), info in cluster.pods.items()
        if ns == namespace and "pod" in info
        for container in info["pod"]["spec"]["containers"]
        if container["name"] == "node"
    }
    assert (
        sizes["sft-prepare"]["limits"] == sizes["sft-prepare"]["requests"] == {"cpu": "4", "memory": "16Gi"}
    )
    assert sizes["sft-resolve"]["limits"] == {"cpu": "1", "memory": "4Gi"}, sizes
    from tests.integration.test_kubernetes_backend import trainjobs

    assert trainjobs(cluster, namespace) == []
    assert cluster.secrets_in(namespace) == [] and cluster.configmaps_in(namespace) == []

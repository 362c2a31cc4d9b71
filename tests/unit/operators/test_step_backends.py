"""Where the workspace steps and the training run: one config per place, one ``build_backend``."""

from __future__ import annotations

import json

import pytest

from airflow_provider_sft.core.backends.kubernetes import KubernetesBackend, KubernetesConfig
from airflow_provider_sft.core.backends.local import LocalConfig, LocalProcessBackend
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.operators.dataset import ResolveDatasetOperator
from airflow_provider_sft.operators.train import SFTTrainOperator


def resolve_task(tmp_path, **values) -> ResolveDatasetOperator:
    return ResolveDatasetOperator(task_id="r", workspace=str(tmp_path), source="bundled", **values)


def test_steps_run_in_the_task_where_the_worker_sees_the_workspace(tmp_path):
    """Local backend, and ``shared`` mode on Kubernetes (the worker mounts the PVC): the local config."""
    assert resolve_task(tmp_path).step_config() == LocalConfig()
    shared = resolve_task(
        tmp_path, backend="kubernetes", workspace_mode="shared", kubernetes={"pvc_name": "ws"}
    )
    assert shared.step_config() == LocalConfig()


def test_in_cluster_mode_a_step_is_a_job_next_to_the_pvc(tmp_path):
    task = resolve_task(
        tmp_path,
        backend="kubernetes",
        kubernetes={"namespace": "ml", "pvc_name": "ws"},
        pvc_mount_path="/data",
    )
    config = task.step_config()
    assert isinstance(config, KubernetesConfig)
    assert (config.namespace, config.pvc_name, config.workspace_mount_path) == ("ml", "ws", "/data")


def test_the_shared_mode_runs_the_step_in_the_task_and_creates_no_job(tmp_path, monkeypatch):
    """No cluster is reachable here: a step that tried to create a job would fail."""
    monkeypatch.setattr(KubernetesBackend, "run_step", None)  # any call to it is a TypeError
    task = resolve_task(
        tmp_path, backend="kubernetes", workspace_mode="shared", kubernetes={"pvc_name": "ws"}
    )
    result = task.run_step({}, "resolve", {"source": "bundled", "workspace": str(tmp_path), "settings": {}})
    assert result["records"] == 235 and (tmp_path / "dataset").is_dir()


def test_the_train_task_builds_the_backend_its_backend_parameter_names(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_K", json.dumps({"conn_type": "kubernetes", "extra": {"namespace": "from-conn"}})
    )
    local = SFTTrainOperator(task_id="t", dataset_path="d", workspace=str(tmp_path))
    assert type(local._backend_for({})) is LocalProcessBackend
    cluster = SFTTrainOperator(
        task_id="t",
        dataset_path="d",
        workspace=str(tmp_path),
        backend="kubernetes",
        pvc_name="ws",
        kubernetes_conn_id="k",
    )
    backend = cluster._backend_for({})
    assert type(backend) is KubernetesBackend
    assert backend.config.namespace == "from-conn"  # the connection's namespace, when none is set
    unknown = SFTTrainOperator(task_id="t", dataset_path="d", workspace=str(tmp_path), backend="slurm")
    with pytest.raises(InvalidParameterError, match="backend: must be one of"):
        unknown._backend_for({})

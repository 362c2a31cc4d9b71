"""What the KFP component does, on the shared core (no KFP import here).

``run_train_model`` receives the component's arguments as they are (artifacts are
duck-typed: ``.path``, ``.metadata``, ``.log_metric``) and does what the original
"SFT Training Component" did, on the same core as the Airflow operator:

1. validate every ``training_*`` parameter (errors name them, before any work);
2. resolve the dataset artifact (or the PVC's ``dataset/train.jsonl``) into
   ``<pvc_path>/dataset/train.jsonl``;
3. train: as a TrainJob when the pod can reach a cluster (``KUBERNETES_SERVER_URL`` +
   ``KUBERNETES_AUTH_TOKEN``, or an in-cluster service account), else on the
   embedded local backend (``SFT_BACKEND=local|kubernetes`` forces one);
4. export ``<pvc_path>/final_model`` and the model artifact, log the metrics, write
   the loss chart; return ``"training completed"``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends import BackendName, JobStatus, TrainingBackend
from airflow_provider_sft.core.chart import write_loss_chart
from airflow_provider_sft.core.dataset import artifact_location, resolve_dataset
from airflow_provider_sft.core.errors import DatasetError, TrainingFailedError
from airflow_provider_sft.core.export import export_model
from airflow_provider_sft.core.files import checked_root
from airflow_provider_sft.core.metrics import read_step_records, summarize, write_summary
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.run import TrainingRun, run_name

COMPLETED = "training completed"
BACKEND_ENV = "SFT_BACKEND"
LOGGED_METRICS = (
    "final_loss",
    "final_loss_smoothed",
    "min_loss",
    "perplexity",
    "steps",
    "total_tokens",
    "samples_seen",
    "avg_throughput_samples_per_second",
    "runtime_seconds",
)


def choose_backend() -> BackendName:
    forced = os.environ.get(BACKEND_ENV)
    if forced:
        return BackendName(forced)
    from airflow_provider_sft.core.backends.kubernetes.client import IN_CLUSTER_CA, environment_server

    if environment_server() is not None or Path(IN_CLUSTER_CA).exists():
        return BackendName.KUBERNETES
    return BackendName.LOCAL


def _dataset_path(dataset: Any, pvc_path: str) -> str:
    """The artifact (its path, metadata ``pvc_path``/``pvc_dir``/``artifact_path``, or uri) -> the PVC.

    Credentials come from the pod's environment: ``HF_TOKEN``/``HF_ENDPOINT`` for the Hub,
    boto3's chain (``AWS_ACCESS_KEY_ID``..., ``AWS_ENDPOINT_URL_S3``) for S3.
    """
    if dataset is not None:
        location = artifact_location(
            getattr(dataset, "path", None), getattr(dataset, "metadata", None), getattr(dataset, "uri", None)
        )
        stats = resolve_dataset(location, pvc_path, log=print)
        print(f"Dataset {stats.source}: {stats.records} records, {stats.skipped} skipped -> {stats.path}")
        return stats.path
    existing = Path(pvc_path) / c.DATASET_DIR / "train.jsonl"
    if existing.is_file():
        return resolve_dataset(str(existing), Path(pvc_path) / ".sft-resolve").path
    raise DatasetError(f"No dataset: pass the `dataset` input or put the data at {existing}")


def task_config_settings(task_config: Any, pvc_path: str) -> dict[str, Any]:
    """The KFP TaskConfig passthrough as Kubernetes backend settings: every field forwarded.

    The volume mounted at ``pvc_path`` is the workspace PVC (``pvc_name``); every other volume
    and mount, the env entries (``valueFrom`` included), tolerations, node selector and affinity
    go to the node pods as they are; resources are merged with the ``training_resource_*``
    ones, and a different value for the same resource is an error, not a silent choice.
    """
    if task_config is None:
        return {}
    volumes = list(getattr(task_config, "volumes", None) or [])
    mounts = list(getattr(task_config, "volume_mounts", None) or [])
    workspace_mounts = [m for m in mounts if m.get("mountPath") == pvc_path]
    workspace_names = {m.get("name") for m in workspace_mounts}
    pvc_name = None
    for volume in volumes:
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim and (volume.get("name") in workspace_names or not workspace_mounts):
            pvc_name, workspace_names = claim, {volume.get("name")}
            break
    return {
        "pvc_name": pvc_name,
        "volumes": [v for v in volumes if v.get("name") not in workspace_names],
        "volume_mounts": [m for m in mounts if m.get("name") not in workspace_names],
        "env": list(getattr(task_config, "env", None) or []),
        "tolerations": list(getattr(task_config, "tolerations", None) or []),
        "node_selector": dict(getattr(task_config, "node_selector", None) or {}),
        "affinity": getattr(task_config, "affinity", None) or None,
        "resources": dict(getattr(task_config, "resources", None) or {}),
    }


def _backend(kind: BackendName, task_config: Any, pvc_path: str) -> TrainingBackend:
    if kind is BackendName.LOCAL:
        from airflow_provider_sft.core.backends.local import LocalProcessBackend

        return LocalProcessBackend()
    from airflow_provider_sft.core.backends.kubernetes import Credentials, KubernetesBackend, KubernetesConfig
    from airflow_provider_sft.core.backends.kubernetes.client import (
        IN_CLUSTER_NAMESPACE,
        connect,
        environment_configuration,
    )
    from airflow_provider_sft.core.backends.kubernetes.pull_secret import oci_pull_secret

    namespace_file = Path(IN_CLUSTER_NAMESPACE)
    namespace = os.environ.get("SFT_NAMESPACE") or (
        namespace_file.read_text().strip() if namespace_file.exists() else "default"
    )
    config = KubernetesConfig.build(
        namespace=namespace,
        runtime_name=os.environ.get("SFT_RUNTIME"),
        workspace_mount_path=pvc_path,
        **task_config_settings(task_config, pvc_path),
    )
    configuration = environment_configuration()
    return KubernetesBackend(
        config=config,
        connect=lambda: connect(configuration),
        credentials=Credentials(
            hf_token=os.environ.get(c.HF_TOKEN_ENV) or None,
            oci_pull_secret=oci_pull_secret(),
        ),
    )


def run_train_model(
    *,
    pvc_path: str,
    output_model: Any,
    output_metrics: Any,
    output_loss_chart: Any,
    dataset: Any = None,
    kubernetes_config: Any = None,
    **training: Any,
) -> str:
    params = SFTParams.from_component_kwargs(**training)  # fails here, before any work
    checked_root(pvc_path, field="pvc_path")  # "/" would create /dataset and /runs
    dataset_path = _dataset_path(dataset, pvc_path)
    name = run_name("kfp", os.environ.get("KFP_RUN_ID") or uuid.uuid4().hex)
    run = TrainingRun(name, params, dataset_path, str(Path(pvc_path) / c.RUNS_DIR / name))
    backend = _backend(choose_backend(), kubernetes_config, pvc_path)
    handle = backend.submit(run)
    result = backend.wait(handle, on_log=lambda line: print(line, flush=True))
    if result.status is not JobStatus.SUCCEEDED:
        raise TrainingFailedError(f"Training run {name} failed: {result.message}")

    final = export_model(run.output_dir, Path(pvc_path) / c.FINAL_MODEL_DIR)
    artifact = export_model(run.output_dir, output_model.path)
    output_model.metadata.update(
        {
            "base_model": params.base_model,
            "source_checkpoint": final.source_checkpoint,
            "pvc_model_path": final.model_path,
            "files": artifact.files,
            "bytes": artifact.bytes,
            "algorithm": "sft",
            "backend": "instructlab-training",
        }
    )
    records, skipped = read_step_records(Path(run.output_dir) / c.METRICS_FILE)
    summary = summarize(records, skipped_lines=skipped)
    write_summary(summary, Path(pvc_path) / c.METRICS_SUMMARY_FILE)
    for key in LOGGED_METRICS:
        value = getattr(summary, key)
        if value is not None:
            output_metrics.log_metric(key, float(value))
    write_loss_chart(records, output_loss_chart.path, summary=summary, title=f"SFT loss — {name}")
    return COMPLETED

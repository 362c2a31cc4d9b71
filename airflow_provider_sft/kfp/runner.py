"""What the KFP component does, on the shared core (no KFP import here).

``run_train_model`` receives the component's arguments as they are (artifacts are
duck-typed: ``.path``, ``.metadata``, ``.log_metric``) and does what the original
"SFT Training Component" did, on the same core as the Airflow operator:

1. validate everything before any work, writing nothing: every ``training_*`` parameter,
   the ``kubernetes_config`` settings, what the backend refuses (its preflight) and where the
   dataset artifact's data is; errors name the component's own parameters;
2. resolve the dataset artifact (or the PVC's ``dataset/train.jsonl``) into
   ``<pvc_path>/dataset/train.jsonl``, then tokenize and measure it here (the ``prepare`` step)
   and stop, before any training job exists, a run that would lose more than 2% of its samples
   (``SFT_MAX_DROPPED_FRACTION`` changes the share);
   a retried or preempted training continues from its saved state (``SFT_RESUME=never``
   starts it clean); ``SFT_CHECKPOINT_GRACE_SECONDS`` sets the pods' grace period to save
   that state when preempted (default: from the base model's size). The component's
   signature is the seed's, so all three are environment variables;
3. train: as a TrainJob when the pod can reach a cluster (``KUBERNETES_SERVER_URL`` +
   ``KUBERNETES_AUTH_TOKEN``, or an in-cluster service account), else on the
   embedded local backend (``SFT_BACKEND=local|kubernetes`` forces one);
4. export ``<pvc_path>/final_model`` and the model artifact (named ``<base model>-checkpoint``,
   as the original named it), log the metrics, write the loss chart; return ``"training completed"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends import Credentials, JobStatus
from airflow_provider_sft.core.backends.factory import BackendConfig, build_backend, config_type
from airflow_provider_sft.core.backends.kubernetes.config import KubernetesConfig
from airflow_provider_sft.core.backends.local import LocalConfig
from airflow_provider_sft.core.checkpoint_grace import checked_checkpoint_grace_seconds
from airflow_provider_sft.core.dataset import artifact_location, resolve_dataset
from airflow_provider_sft.core.errors import DatasetError, InvalidParameterError, TrainingFailedError
from airflow_provider_sft.core.files import checked_root
from airflow_provider_sft.core.params import COMPONENT_PARAMETER_PREFIX, SFTParams
from airflow_provider_sft.core.results.chart import write_loss_chart
from airflow_provider_sft.core.results.efficiency import run_efficiency
from airflow_provider_sft.core.results.export import (
    export_model,
    require_metrics_file,
    select_final_checkpoint,
)
from airflow_provider_sft.core.results.metrics import read_metrics_log, summarize_log, write_summary
from airflow_provider_sft.core.results.model_card import MODEL_CARD_FILE, model_card
from airflow_provider_sft.core.run import TrainingRun, run_name
from airflow_provider_sft.core.training.data_report import (
    DataReport,
    check_dropped,
    checked_max_dropped_fraction,
)
from airflow_provider_sft.core.training.resume import checked_resume

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


def choose_backend() -> type[BackendConfig]:
    """``SFT_BACKEND``'s backend, else Kubernetes when the pod can reach a cluster, else local."""
    forced = os.environ.get(BACKEND_ENV)
    if forced:
        return config_type(forced)
    from airflow_provider_sft.core.backends.kubernetes.client import IN_CLUSTER_CA, environment_server

    if environment_server() is not None or Path(IN_CLUSTER_CA).exists():
        return KubernetesConfig
    return LocalConfig


def _dataset_source(dataset: Any, pvc_path: str) -> tuple[str, Path]:
    """Where the data is and the workspace it resolves into; reads and writes nothing.

    The artifact (its path, metadata ``pvc_path``/``pvc_dir``/``artifact_path``, or uri), else
    the PVC's own ``dataset/train.jsonl``. Credentials come from the pod's environment:
    ``HF_TOKEN``/``HF_ENDPOINT`` for the Hub, boto3's chain (``AWS_ACCESS_KEY_ID``...,
    ``AWS_ENDPOINT_URL_S3``) for S3.
    """
    if dataset is not None:
        location = artifact_location(
            getattr(dataset, "path", None), getattr(dataset, "metadata", None), getattr(dataset, "uri", None)
        )
        return location, Path(pvc_path)
    existing = Path(pvc_path) / c.DATASET_DIR / "train.jsonl"
    if existing.is_file():
        return str(existing), Path(pvc_path) / ".sft-resolve"
    raise DatasetError(f"No dataset: pass the `dataset` input or put the data at {existing}")


def _resolved(location: str, workspace: Path) -> str:
    stats = resolve_dataset(location, workspace, log=print)
    print(f"Dataset {stats.source}: {stats.records} records, {stats.skipped} skipped -> {stats.path}")
    return stats.path


#: Settings the shim does not take from a parameter, named where the component's user sets them.
_SETTING_NAMES = {
    "backend": BACKEND_ENV,
    "pvc_name": "kubernetes_config.volumes",
    "workspace_mount_path": "pvc_path",
    "namespace": "SFT_NAMESPACE",
    "runtime_name": "SFT_RUNTIME",
}
_TRAINING_NAME = re.compile(
    r"(?<![\w.])("
    + "|".join(sorted((name for name in SFTParams.model_fields if "_" in name), key=len, reverse=True))
    + r")\b"
)


def component_name(name: str) -> str:
    """A core parameter's name as the KFP component's interface names it."""
    if name.startswith(COMPONENT_PARAMETER_PREFIX):
        return name
    if name.split(".")[0] in SFTParams.model_fields:
        return COMPONENT_PARAMETER_PREFIX + name
    return _SETTING_NAMES.get(name, f"kubernetes_config.{name}")  # the rest comes from the TaskConfig


@contextlib.contextmanager
def component_names() -> Iterator[None]:
    """Re-raise a core :class:`InvalidParameterError` in the component's names, reasons included."""
    try:
        yield
    except InvalidParameterError as error:
        renamed = {
            component_name(name): _TRAINING_NAME.sub(lambda m: COMPONENT_PARAMETER_PREFIX + m[1], reason)
            for name, reason in error.errors.items()
        }
        raise InvalidParameterError(renamed) from None


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


def backend_config(
    kind: type[BackendConfig], task_config: Any, pvc_path: str
) -> tuple[BackendConfig, Credentials]:
    """The config of a ``kind`` backend from the pod's environment and the TaskConfig, and its
    credentials (``HF_TOKEN``; on Kubernetes ``OCI_PULL_SECRET_MODEL_DOWNLOAD`` too)."""
    credentials = Credentials(hf_token=os.environ.get(c.HF_TOKEN_ENV) or None)
    if not issubclass(kind, KubernetesConfig):
        return kind(), credentials
    from airflow_provider_sft.core.backends.kubernetes.client import IN_CLUSTER_NAMESPACE
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
    return config, dataclasses.replace(credentials, oci_pull_secret=oci_pull_secret())


MAX_DROPPED_ENV = "SFT_MAX_DROPPED_FRACTION"
RESUME_ENV = "SFT_RESUME"  # "auto" (default) or "never", e.g. task.set_env_variable
#: The component's signature is the seed's: the pods' grace period comes from the environment.
CHECKPOINT_GRACE_ENV = "SFT_CHECKPOINT_GRACE_SECONDS"
#: The data report's figures the metrics artifact carries, as ``data_<name>``.
LOGGED_DATA_METRICS = ("input_samples", "kept_samples", "dropped_samples", "label_tokens", "total_steps")


def _prepared(run: TrainingRun) -> DataReport:
    """The ``prepare`` step, here where the PVC is mounted, then the gate.

    The component's signature is the seed's, so the gate's share comes from the environment
    (``SFT_MAX_DROPPED_FRACTION``, e.g. ``task.set_env_variable``), else the default 0.02.

    The training job finds the processed data by its fingerprint and does not process it again.
    """
    from airflow_provider_sft.core.pod.steps import prepare, prepare_config

    config = prepare_config(run.dataset_path, run.processed_data_dir, run.params)
    report = DataReport.from_dict(prepare(config, log=print, env=os.environ)["report"])
    print(f"data report: {report.summary()}", flush=True)
    check_dropped(report, run.max_dropped_fraction, field=MAX_DROPPED_ENV)
    return report


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
    with component_names():  # everything that can be refused is, before anything is written
        params = SFTParams.from_component_kwargs(**training)
        checked_root(pvc_path, field="pvc_path")  # "/" would create /dataset and /runs
        config, credentials = backend_config(choose_backend(), kubernetes_config, pvc_path)
        backend = build_backend(config, credentials=credentials)
        location, workspace = _dataset_source(dataset, pvc_path)
        name = run_name("kfp", os.environ.get("KFP_RUN_ID") or uuid.uuid4().hex)
        planned = str(workspace / c.DATASET_DIR / "train.jsonl")
        max_dropped = checked_max_dropped_fraction(
            os.environ.get(MAX_DROPPED_ENV, c.DEFAULT_MAX_DROPPED_FRACTION), field=MAX_DROPPED_ENV
        )
        grace = checked_checkpoint_grace_seconds(
            os.environ.get(CHECKPOINT_GRACE_ENV), base_model=params.base_model, field=CHECKPOINT_GRACE_ENV
        )
        run = TrainingRun(
            name,
            params,
            planned,
            str(Path(pvc_path) / c.RUNS_DIR / name),
            max_dropped_fraction=max_dropped,
            resume=checked_resume(os.environ.get(RESUME_ENV, c.DEFAULT_RESUME), field=RESUME_ENV),
            checkpoint_grace_seconds=grace,
        )
        backend.preflight(run)
    run = dataclasses.replace(run, dataset_path=_resolved(location, workspace))
    data_report = _prepared(run)  # tokenized and judged here, before the training job exists
    with component_names():
        handle = backend.submit(run)
    result = backend.wait(handle, on_log=lambda line: print(line, flush=True))
    if result.status is not JobStatus.SUCCEEDED:
        raise TrainingFailedError(f"Training run {name} failed: {result.message}")

    metrics_file = require_metrics_file(run.output_dir)  # before a model is published
    metrics = read_metrics_log(metrics_file)
    records, summary = metrics.records, summarize_log(metrics)
    checkpoint = select_final_checkpoint(run.output_dir)
    efficiency = run_efficiency(metrics, model_dir=checkpoint, job_created=handle.created)
    # The same card as an Airflow export's: KFP's launcher uploads output_model with it.
    card = model_card(
        Path(run.output_dir),
        summary=summary.to_dict(),
        data_report=data_report.to_dict(),
        efficiency=efficiency.to_dict(),
        facts=metrics.facts,
    )
    with_card = {MODEL_CARD_FILE: card.encode()}
    final = export_model(
        run.output_dir, Path(pvc_path) / c.FINAL_MODEL_DIR, extra_files=with_card, checkpoint=checkpoint
    )
    artifact = export_model(run.output_dir, output_model.path, extra_files=with_card, checkpoint=checkpoint)
    output_model.name = f"{params.base_model}-checkpoint"  # as the original component named it
    output_model.metadata.update(
        {
            "model_name": params.base_model,
            "base_model": params.base_model,
            "artifact_path": output_model.path,
            "pvc_model_dir": final.model_path,
            "source_checkpoint": final.source_checkpoint,
            "pvc_model_path": final.model_path,
            "files": artifact.files,
            "bytes": artifact.bytes,
            "algorithm": "sft",
            "backend": "instructlab-training",
        }
    )
    write_summary(
        summary,
        Path(pvc_path) / c.METRICS_SUMMARY_FILE,
        data=data_report.to_dict(),
        efficiency=efficiency.to_dict(),
    )
    for key in LOGGED_METRICS:
        value = getattr(summary, key)
        if value is not None:
            output_metrics.log_metric(key, float(value))
    for key in LOGGED_DATA_METRICS:
        output_metrics.log_metric(f"data_{key}", float(getattr(data_report, key)))
    write_loss_chart(
        records, output_loss_chart.path, summary=summary, title=f"SFT loss — {name}", efficiency=efficiency
    )
    return COMPLETED

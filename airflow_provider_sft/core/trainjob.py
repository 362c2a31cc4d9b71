"""Kubeflow Trainer ``TrainJob`` manifests and status, as pure functions.

``build_trainjob`` turns a validated :class:`TrainingRun` into a TrainJob for
either spec generation:

* ``v2.1``: ``spec.labels``/``spec.annotations`` and ``spec.podTemplateOverrides``
  targeting the ``node`` job;
* ``v2.2`` and later: one ``spec.runtimePatches`` entry owned by this provider.

Nothing secret is ever written into the manifest: ``HF_TOKEN`` is a
``secretKeyRef`` and the OCI pull secret an ``imagePullSecrets`` entry, both
naming the Secret built by ``build_secret`` (owned by the TrainJob, so it is
garbage-collected with it).

``classify`` reads a TrainJob back into a :class:`JobState`; the sync waiter and
the async trigger share it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.run import TrainingRun


class SpecGeneration(str, Enum):
    AUTO = "auto"  # detect from the served CRD
    V2_1 = "v2.1"  # podTemplateOverrides
    V2_2 = "v2.2"  # runtimePatches (v2.2 and later)


class JobPhase(str, Enum):
    PENDING = "pending"  # created, pods not running yet
    SUSPENDED = "suspended"  # queued (e.g. by Kueue): waiting, not stuck
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (JobPhase.SUCCEEDED, JobPhase.FAILED)


@dataclass(frozen=True)
class JobState:
    phase: JobPhase
    reason: str = ""
    message: str = ""

    @property
    def terminal(self) -> bool:
        return self.phase.terminal


@dataclass(frozen=True)
class KubernetesOptions:
    """Where and how TrainJobs run; everything here is cluster configuration, not training."""

    namespace: str = "default"
    runtime_name: str = c.DEFAULT_RUNTIME
    pvc_name: str | None = None  # the workspace PVC; None = the runtime provides storage
    workspace_mount_path: str = c.DEFAULT_WORKSPACE_MOUNT
    spec_generation: SpecGeneration = SpecGeneration.AUTO
    image: str | None = None  # override the runtime's trainer image
    # The pod installs this provider unless the image already has it (set to None then).
    package_spec: str | None = "airflow-provider-sft"
    service_account: str | None = None
    extra_labels: dict[str, str] = field(default_factory=dict)


_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def label_value(text: str | int | None) -> str:
    """Any string as a valid label value (<= 63, alphanumeric ends); long ones keep a hash suffix."""
    value = _LABEL_UNSAFE.sub("-", "" if text is None else str(text)).strip("-_.")
    if len(value) > 63:
        digest = hashlib.sha256(str(text).encode()).hexdigest()[:8]
        value = f"{value[:54].rstrip('-_.')}-{digest}"
    return value


def secret_name(job_name: str) -> str:
    return f"{job_name}-secrets"


def build_secret(
    job_name: str,
    namespace: str,
    *,
    hf_token: str | None,
    oci_pull_secret: str | None,
    labels: dict[str, str],
) -> dict[str, Any] | None:
    """A Secret holding the HF token and/or the OCI pull secret (dockerconfigjson), or None if neither."""
    data: dict[str, str] = {}
    if hf_token:
        data[c.SECRET_HF_TOKEN_KEY] = base64.b64encode(hf_token.encode()).decode()
    if oci_pull_secret:
        data[".dockerconfigjson"] = base64.b64encode(oci_pull_secret.encode()).decode()
    if not data:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret_name(job_name), "namespace": namespace, "labels": labels},
        # dockerconfigjson lets the same Secret serve imagePullSecrets; it then must hold that key.
        "type": "kubernetes.io/dockerconfigjson" if oci_pull_secret else "Opaque",
        "data": data,
    }


def owner_reference(trainjob: dict[str, Any]) -> dict[str, Any]:
    """Makes an object garbage-collected with its TrainJob."""
    return {
        "apiVersion": c.TRAINER_API_VERSION,
        "kind": c.TRAINJOB_KIND,
        "name": trainjob["metadata"]["name"],
        "uid": trainjob["metadata"]["uid"],
        "blockOwnerDeletion": False,
        "controller": False,
    }


def _pod_env(run: TrainingRun, options: KubernetesOptions, *, has_hf_token: bool) -> list[dict[str, Any]]:
    cache = f"{options.workspace_mount_path}/.cache"
    env = {
        "PYTHONUNBUFFERED": "1",
        "NCCL_DEBUG": "WARN",
        "HF_HOME": f"{cache}/huggingface",
        "TRITON_CACHE_DIR": f"{cache}/triton",
        "XDG_CACHE_HOME": cache,
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    env.update(run.params.envs)  # the user's training_envs win over our defaults
    entries: list[dict[str, Any]] = [{"name": name, "value": value} for name, value in env.items()]
    entries.append({"name": c.RUN_CONFIG_ENV, "value": orjson.dumps(run.to_json_dict()).decode()})
    if has_hf_token:
        entries.append(
            {
                "name": c.HF_TOKEN_ENV,
                "valueFrom": {"secretKeyRef": {"name": secret_name(run.name), "key": c.SECRET_HF_TOKEN_KEY}},
            }
        )
    return entries


def _command(options: KubernetesOptions) -> list[str]:
    run = "exec python -m airflow_provider_sft.core.entrypoint"
    if not options.package_spec:
        return ["bash", "-c", run]
    # Installs into the user site so an arbitrary UID (OpenShift) can write it.
    install = f"pip install --quiet --user --no-warn-script-location '{options.package_spec}'"
    return ["bash", "-c", f"{install} && {run}"]


def _pod_spec_patch(run: TrainingRun, options: KubernetesOptions, *, has_pull_secret: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    container: dict[str, Any] = {"name": c.NODE}
    if options.pvc_name:
        spec["volumes"] = [
            {"name": c.WORKSPACE_VOLUME, "persistentVolumeClaim": {"claimName": options.pvc_name}}
        ]
        container["volumeMounts"] = [{"name": c.WORKSPACE_VOLUME, "mountPath": options.workspace_mount_path}]
    spec["containers"] = [container]
    if has_pull_secret:
        spec["imagePullSecrets"] = [{"name": secret_name(run.name)}]
    if options.service_account:
        spec["serviceAccountName"] = options.service_account
    return spec


def _resources(run: TrainingRun) -> dict[str, Any]:
    quantities = {"cpu": run.params.resource_cpu_per_worker, "memory": run.params.resource_memory_per_worker}
    if run.params.resource_gpu_per_worker:
        quantities[c.GPU_RESOURCE_NAME] = str(run.params.resource_gpu_per_worker)
    return {"requests": dict(quantities), "limits": dict(quantities)}  # requests = limits: Guaranteed QoS


def build_trainjob(
    run: TrainingRun,
    options: KubernetesOptions,
    *,
    generation: SpecGeneration,
    labels: dict[str, str],
    has_hf_token: bool = False,
    has_pull_secret: bool = False,
) -> dict[str, Any]:
    """The TrainJob for ``run`` in the given spec generation (never ``AUTO``: detect first)."""
    if generation is SpecGeneration.AUTO:
        raise ValueError("resolve SpecGeneration.AUTO with detect_generation() before building")
    if run.params.base_model.startswith("oci://"):
        raise InvalidParameterError(
            {
                "base_model": "oci:// base models are not supported yet; use a HuggingFace id or a path on the PVC"
            }
        )
    params = run.params
    trainer: dict[str, Any] = {
        "numNodes": params.resource_num_workers,
        "resourcesPerNode": _resources(run),
        "command": _command(options),
        "env": _pod_env(run, options, has_hf_token=has_hf_token),
    }
    if params.resource_num_procs_per_worker != "auto":  # "auto": the runtime decides (one per GPU)
        trainer["numProcPerNode"] = params.resource_num_procs_per_worker
    if options.image:
        trainer["image"] = options.image
    job_labels = {**labels, **options.extra_labels}
    pod_metadata = {
        "labels": {**job_labels, **params.metadata_labels},
        "annotations": dict(params.metadata_annotations),
    }
    pod_spec = _pod_spec_patch(run, options, has_pull_secret=has_pull_secret)
    spec: dict[str, Any] = {
        "runtimeRef": {
            "name": options.runtime_name,
            "apiGroup": c.TRAINER_GROUP,
            "kind": c.CLUSTER_TRAINING_RUNTIME_KIND,
        },
        "trainer": trainer,
    }
    if generation is SpecGeneration.V2_1:
        spec["labels"] = dict(params.metadata_labels)
        spec["annotations"] = dict(params.metadata_annotations)
        spec["podTemplateOverrides"] = [
            {"targetJobs": [{"name": c.NODE}], "metadata": pod_metadata, "spec": pod_spec}
        ]
    else:
        replicated_job = {
            "name": c.NODE,
            "template": {"spec": {"template": {"metadata": pod_metadata, "spec": pod_spec}}},
        }
        spec["runtimePatches"] = [
            {
                "manager": c.RUNTIME_PATCH_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [replicated_job]}}},
            }
        ]
    return {
        "apiVersion": c.TRAINER_API_VERSION,
        "kind": c.TRAINJOB_KIND,
        "metadata": {
            "name": run.name,
            "namespace": options.namespace,
            "labels": job_labels,
            "annotations": dict(params.metadata_annotations),
        },
        "spec": spec,
    }


def detect_generation(crd: dict[str, Any] | None) -> SpecGeneration:
    """The spec generation a served TrainJob CRD accepts (``v2.2`` when it cannot be told)."""
    if not crd:
        return SpecGeneration.V2_2
    for version in crd.get("spec", {}).get("versions", []):
        if version.get("name") != c.TRAINER_VERSION:
            continue
        spec = version.get("schema", {}).get("openAPIV3Schema", {}).get("properties", {}).get("spec", {})
        properties = spec.get("properties", {})
        if "runtimePatches" in properties:
            return SpecGeneration.V2_2
        if "podTemplateOverrides" in properties:
            return SpecGeneration.V2_1
    return SpecGeneration.V2_2


def classify(trainjob: dict[str, Any]) -> JobState:
    """The phase of a TrainJob from its status conditions and job counts."""
    status = trainjob.get("status") or {}
    conditions = {cond.get("type"): cond for cond in status.get("conditions") or []}

    def true(kind: str) -> dict[str, Any] | None:
        cond = conditions.get(kind)
        return cond if cond and cond.get("status") == "True" else None

    if cond := true(c.CONDITION_FAILED):
        return JobState(JobPhase.FAILED, cond.get("reason", ""), cond.get("message", ""))
    if cond := true(c.CONDITION_COMPLETE):
        return JobState(JobPhase.SUCCEEDED, cond.get("reason", ""), cond.get("message", ""))
    if (cond := true(c.CONDITION_SUSPENDED)) or (trainjob.get("spec") or {}).get("suspend"):
        cond = cond or {}
        return JobState(JobPhase.SUSPENDED, cond.get("reason", "Suspended"), cond.get("message", ""))
    jobs = status.get("jobsStatus") or []
    if any((job.get("active") or 0) > 0 or (job.get("ready") or 0) > 0 for job in jobs):
        return JobState(JobPhase.RUNNING)
    return JobState(JobPhase.PENDING)

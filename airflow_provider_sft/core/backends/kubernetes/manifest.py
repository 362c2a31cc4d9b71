"""Kubeflow Trainer ``TrainJob`` manifests, as pure functions.

``training_work`` (or ``step_work``) says what the node pods run; ``build_trainjob`` turns
that into a TrainJob for either spec generation (``pytorchjob.build_pytorchjob`` into a
PyTorchJob):

* ``v2.1``: ``spec.labels``/``spec.annotations`` and ``spec.podTemplateOverrides``
  targeting the ``node`` job;
* ``v2.2`` and later: one ``spec.runtimePatches`` entry owned by this provider (its
  ``manager`` a domain-prefixed path, as the Trainer webhook requires), and
  ``spec.activeDeadlineSeconds`` from the run's timeout;
* ``v2.3`` and later: the same patch also sets the node pods' ``terminationGracePeriodSeconds``
  (``checkpoint_grace_seconds``: time to save a full state when preempted). v2.1's
  ``podTemplateOverrides`` and v2.2's patches have no such field: there the runtime's own
  period holds, and the preflight (:func:`.admission.grace_period_warning`) says so.

The node container runs the pod program (:mod:`.program`) from a ConfigMap that
``build_program_configmap`` makes, mounted read-only; nothing is installed at start.
``step_work`` is the one-node job of a workspace step (dataset resolution, model export)
that runs next to the PVC when the worker cannot mount it.

Nothing secret is ever written into the manifest: ``HF_TOKEN`` (and a step's S3 keys)
are ``secretKeyRef``s and the OCI pull secret an ``imagePullSecrets`` entry, all
naming the Secret built by ``build_secret``. The Secret and the ConfigMap are owned
by the TrainJob, so they are garbage-collected with it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.backends.kubernetes import program
from airflow_provider_sft.core.backends.kubernetes.config import KubernetesConfig, SpecGeneration
from airflow_provider_sft.core.backends.kubernetes.retry import KubeApiError
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.quantity import parse_quantity
from airflow_provider_sft.core.run import TrainingRun

_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def label_value(text: str | int | None) -> str:
    """Any string as a valid label value (<= 63, alphanumeric ends), never two texts as one.

    A text that is a valid value already is kept as it is. One that has to change (characters
    replaced, ``-_.`` stripped from its ends, or cut to length) gets a hash of the original as
    a suffix: else map index ``-1`` (an unmapped task) would be labelled ``1`` like map index 1,
    and run ids differing only in ``:`` and ``-`` would share a label.
    """
    original = "" if text is None else str(text)
    value = _LABEL_UNSAFE.sub("-", original).strip("-_.")
    if value == original and len(value) <= 63:
        return value
    digest = hashlib.sha256(original.encode()).hexdigest()[:8]
    return f"{value[:54].rstrip('-_.')}-{digest}".lstrip("-")


def secret_name(job_name: str) -> str:
    return f"{job_name}-secrets"


def program_configmap_name(job_name: str) -> str:
    return f"{job_name}-program"


#: A workspace step copies files (prepare tokenizes: its operator asks for more); it needs neither
#: a GPU nor the training's memory.
STEP_RESOURCES = {"cpu": "1", "memory": "4Gi"}


def build_secret(
    job_name: str,
    namespace: str,
    *,
    env: dict[str, str],
    oci_pull_secret: str | None,
    labels: dict[str, str],
) -> dict[str, Any] | None:
    """A Secret holding secret env values (under their names) and/or the OCI pull secret, or None."""
    data: dict[str, str] = {
        name: base64.b64encode(value.encode()).decode() for name, value in sorted(env.items()) if value
    }
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


def build_program_configmap(
    job_name: str, namespace: str, *, config: dict[str, Any], labels: dict[str, str]
) -> dict[str, Any]:
    """The pod program and the config it runs, mounted into the node container."""
    from airflow_provider_sft import __version__

    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": program_configmap_name(job_name),
            "namespace": namespace,
            "labels": {**labels, c.LABEL_PROGRAM_VERSION: label_value(__version__)},
            "annotations": {c.ANNOTATION_PROGRAM_SHA256: program.program_digest()},
        },
        **program.configmap_data(jsonio.dumps(config, indent=True)),
    }


def owner_reference(job: dict[str, Any]) -> dict[str, Any]:
    """Makes an object garbage-collected with its job (a TrainJob or a PyTorchJob)."""
    return {
        "apiVersion": job["apiVersion"],
        "kind": job["kind"],
        "name": job["metadata"]["name"],
        "uid": job["metadata"]["uid"],
        "blockOwnerDeletion": False,
        "controller": False,
    }


def _pod_env(
    job_name: str, config: KubernetesConfig, user_env: dict[str, str], secret_env: list[str]
) -> list[dict[str, Any]]:
    cache = f"{config.workspace_mount_path}/.cache"
    env = {
        "PYTHONUNBUFFERED": "1",
        "NCCL_DEBUG": "WARN",
        "HF_HOME": f"{cache}/huggingface",
        "TRITON_CACHE_DIR": f"{cache}/triton",
        "XDG_CACHE_HOME": cache,
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    env.update(user_env)  # the user's training_envs win over our defaults
    entries: list[dict[str, Any]] = [{"name": name, "value": value} for name, value in env.items()]
    forwarded = {entry["name"] for entry in config.env}
    entries = [entry for entry in entries if entry["name"] not in forwarded] + [dict(e) for e in config.env]
    for name in sorted(secret_env):
        entries.append(
            {"name": name, "valueFrom": {"secretKeyRef": {"name": secret_name(job_name), "key": name}}}
        )
    return entries


def pod_spec_patch(
    job_name: str, config: KubernetesConfig, *, has_pull_secret: bool, container: str = c.NODE
) -> dict[str, Any]:
    """The pod spec every job's node pods get: volumes (PVC, program, /tmp, /dev/shm) and scheduling."""
    spec: dict[str, Any] = {}
    node: dict[str, Any] = {"name": container}
    volumes: list[dict[str, Any]] = [
        {"name": c.WORKSPACE_VOLUME, "persistentVolumeClaim": {"claimName": config.pvc_name}},
        {
            "name": c.PROGRAM_VOLUME,
            "configMap": {"name": program_configmap_name(job_name), "defaultMode": 0o444},
        },
        {"name": c.TMP_VOLUME, "emptyDir": {}},  # /tmp, for images with a read-only root filesystem
    ]
    mounts: list[dict[str, Any]] = [
        {"name": c.WORKSPACE_VOLUME, "mountPath": config.workspace_mount_path},
        {"name": c.PROGRAM_VOLUME, "mountPath": program.PROGRAM_DIR, "readOnly": True},
        {"name": c.TMP_VOLUME, "mountPath": "/tmp"},
    ]
    volumes += [dict(volume) for volume in config.volumes]
    mounts += [dict(mount) for mount in config.volume_mounts]
    if config.shm_size:  # NCCL and DataLoader workers need more than the container default of 64 Mi
        volumes.append({"name": c.SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": config.shm_size}})
        mounts.append({"name": c.SHM_VOLUME, "mountPath": "/dev/shm"})
    spec["volumes"] = volumes
    node["volumeMounts"] = mounts
    spec["containers"] = [node]
    if has_pull_secret:
        spec["imagePullSecrets"] = [{"name": secret_name(job_name)}]
    if config.service_account:
        spec["serviceAccountName"] = config.service_account
    if config.node_selector:
        spec["nodeSelector"] = dict(config.node_selector)
    if config.tolerations:
        spec["tolerations"] = [dict(toleration) for toleration in config.tolerations]
    if config.affinity:
        spec["affinity"] = dict(config.affinity)
    return spec


def _resources(run: TrainingRun, config: KubernetesConfig) -> dict[str, Any]:
    """requests = limits (Guaranteed QoS) from the training parameters, plus ``config.resources``."""
    quantities = {"cpu": run.params.resource_cpu_per_worker, "memory": run.params.resource_memory_per_worker}
    if run.params.resource_gpu_per_worker:
        quantities[c.GPU_RESOURCE_NAME] = str(run.params.resource_gpu_per_worker)
    resources = {"requests": dict(quantities), "limits": dict(quantities)}
    conflicts = {}
    for kind, extra in config.resources.items():
        for resource, value in (extra or {}).items():
            ours = resources[kind].get(resource)
            if ours is not None and parse_quantity(str(ours)) != parse_quantity(str(value)):
                conflicts[f"resources.{kind}.{resource}"] = (
                    f"{value!r} disagrees with {ours!r} from {_RESOURCE_PARAMETER.get(resource, 'the training parameters')}"
                )
            resources[kind][resource] = ours if ours is not None else str(value)
    if conflicts:
        raise InvalidParameterError(conflicts, kind="Kubernetes")
    return resources


_RESOURCE_PARAMETER = {
    "cpu": "resource_cpu_per_worker",
    "memory": "resource_memory_per_worker",
    c.GPU_RESOURCE_NAME: "resource_gpu_per_worker",
}


@dataclass(frozen=True)
class NodeWork:
    """What each node pod of a job runs, whichever kind of job carries it.

    ``labels`` identify the run (managed-by, dag/task/run ids) and go on the job and its
    pods; ``pod_metadata`` adds ``metadata_labels``/``metadata_annotations`` on the pods only.
    """

    name: str
    num_nodes: int
    procs_per_node: int | None  # None: "auto" (one per GPU; the runtime or torchrun decides)
    command: list[str]
    env: list[dict[str, Any]]
    resources: dict[str, Any]
    pod_metadata: dict[str, Any]
    labels: dict[str, str]
    annotations: dict[str, str]  # on the job
    # The pods' terminationGracePeriodSeconds; None: the runtime's (a workspace step saves nothing).
    termination_grace_seconds: int | None = None


def training_work(
    run: TrainingRun,
    config: KubernetesConfig,
    *,
    labels: dict[str, str],
    secret_env: list[str] = (),  # type: ignore[assignment]
) -> NodeWork:
    """The training of ``run``. ``secret_env`` names the variables read from the run's Secret."""
    params = run.params
    procs = params.resource_num_procs_per_worker
    return NodeWork(
        name=run.name,
        num_nodes=params.resource_num_workers,
        procs_per_node=None if procs == "auto" else int(procs),
        command=program.command("train"),
        env=_pod_env(run.name, config, params.envs, list(secret_env)),
        resources=_resources(run, config),
        pod_metadata={
            "labels": {**labels, **params.metadata_labels},
            "annotations": dict(params.metadata_annotations),
        },
        labels=dict(labels),
        annotations=dict(params.metadata_annotations),
        termination_grace_seconds=run.checkpoint_grace_seconds,
    )


def step_work(
    job_name: str,
    step: str,
    config: KubernetesConfig,
    *,
    labels: dict[str, str],
    secret_env: list[str] = (),  # type: ignore[assignment]
    resources: Mapping[str, str] | None = None,
) -> NodeWork:
    """A one-node job running the workspace step ``step`` of the pod program, without a GPU,
    with ``resources`` (``cpu``, ``memory``) over the default :data:`STEP_RESOURCES`."""
    sized = {**STEP_RESOURCES, **(resources or {})}
    return NodeWork(
        name=job_name,
        num_nodes=1,
        procs_per_node=None,
        command=program.command(step),
        env=_pod_env(job_name, config, {}, list(secret_env)),
        resources={"requests": dict(sized), "limits": dict(sized)},
        pod_metadata={"labels": dict(labels), "annotations": {}},
        labels=dict(labels),
        annotations={},
    )


def build_trainjob(
    work: NodeWork,
    config: KubernetesConfig,
    *,
    generation: SpecGeneration,
    has_pull_secret: bool = False,
    active_deadline_seconds: int | None = None,
) -> dict[str, Any]:
    """The TrainJob for ``work`` in the given spec generation (never ``AUTO``: detect first).

    ``job_labels`` (Kueue's queue name, say) go on the TrainJob only. ``active_deadline_seconds``
    is set where the CRD has it (v2.2+); on v2.1 the wait enforces the timeout by deleting the job.
    """
    if generation is SpecGeneration.AUTO:
        raise ValueError("resolve SpecGeneration.AUTO with detect_generation() before building")
    pod_spec = pod_spec_patch(work.name, config, has_pull_secret=has_pull_secret)
    if generation is SpecGeneration.V2_3 and work.termination_grace_seconds is not None:
        pod_spec["terminationGracePeriodSeconds"] = work.termination_grace_seconds
    if generation is SpecGeneration.V2_1:
        pod_patch = _v21_pod_overrides(work, pod_spec)
    else:
        pod_patch = _runtime_patches(work, pod_spec, active_deadline_seconds)
    spec: dict[str, Any] = {
        "runtimeRef": {
            "name": config.runtime_name,
            "apiGroup": c.TRAINER_GROUP,
            "kind": config.runtime_kind.value,
        },
        "trainer": _trainer_spec(work, config),
        **pod_patch,
    }
    return {
        "apiVersion": c.TRAINER_API_VERSION,
        "kind": c.TRAINJOB_KIND,
        "metadata": job_metadata(work, config),
        "spec": spec,
    }


def _trainer_spec(work: NodeWork, config: KubernetesConfig) -> dict[str, Any]:
    """``spec.trainer``: nodes, resources, command and env; the image only when one is given."""
    trainer: dict[str, Any] = {
        "numNodes": work.num_nodes,
        "resourcesPerNode": work.resources,
        "command": work.command,
        "env": work.env,
    }
    if work.procs_per_node is not None:  # "auto": the runtime decides (one per GPU)
        trainer["numProcPerNode"] = work.procs_per_node
    if config.image:
        trainer["image"] = config.image
    return trainer


def _v21_pod_overrides(work: NodeWork, pod_spec: dict[str, Any]) -> dict[str, Any]:
    """Trainer v2.1's way to reach the node pods: ``spec.labels``/``annotations`` and ``podTemplateOverrides``.

    The run's own labels are left out of ``spec.labels``: they are on the TrainJob already.
    """
    pod_metadata = work.pod_metadata
    return {
        "labels": {k: v for k, v in pod_metadata["labels"].items() if k not in work.labels},
        "annotations": dict(pod_metadata["annotations"]),
        "podTemplateOverrides": [
            {"targetJobs": [{"name": c.NODE}], "metadata": pod_metadata, "spec": pod_spec}
        ],
    }


def _runtime_patches(
    work: NodeWork, pod_spec: dict[str, Any], active_deadline_seconds: int | None
) -> dict[str, Any]:
    """v2.2+: the node pods patched through ``runtimePatches`` (under our manager), and the deadline field."""
    patch: dict[str, Any] = {}
    if active_deadline_seconds is not None:
        patch["activeDeadlineSeconds"] = max(1, int(active_deadline_seconds))
    replicated_job = {
        "name": c.NODE,
        "template": {"spec": {"template": {"metadata": work.pod_metadata, "spec": pod_spec}}},
    }
    patch["runtimePatches"] = [
        {
            "manager": c.RUNTIME_PATCH_MANAGER,
            "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [replicated_job]}}},
        }
    ]
    return patch


def job_metadata(work: NodeWork, config: KubernetesConfig) -> dict[str, Any]:
    """The job's own metadata: the run's labels, ``job_labels`` (Kueue) and annotations."""
    return {
        "name": work.name,
        "namespace": config.namespace,
        "labels": {**work.labels, **config.job_labels},
        "annotations": {**work.annotations, **config.job_annotations},
    }


#: Where a runtime patch's pod spec sits in the TrainJob schema (v2.2+), below ``spec.runtimePatches``.
_PATCH_POD_SPEC_SCHEMA = (
    "items",
    "trainingRuntimeSpec",
    "template",
    "spec",
    "replicatedJobs",
    "template",
    "spec",
    "template",
    "spec",
)


def _patch_pod_spec_properties(runtime_patches: dict[str, Any]) -> dict[str, Any]:
    """The fields a runtime patch may set in a pod spec, per the CRD schema (empty when not found)."""
    schema = runtime_patches
    for key in _PATCH_POD_SPEC_SCHEMA:
        schema = schema.get(key, {}) if key == "items" else schema.get("properties", {}).get(key, {})
        if key == "replicatedJobs":
            schema = schema.get("items", {})
    return schema.get("properties", {})


def detect_generation(crd: dict[str, Any] | None) -> SpecGeneration:
    """The spec generation a served TrainJob CRD accepts (``v2.2`` when it cannot be told).

    v2.3 is told from v2.2 by the field it added: ``terminationGracePeriodSeconds`` in a runtime
    patch's pod spec (kubeflow/trainer PR #3324).
    """
    if not crd:
        return SpecGeneration.V2_2
    for version in crd.get("spec", {}).get("versions", []):
        if version.get("name") != c.TRAINER_VERSION:
            continue
        spec = version.get("schema", {}).get("openAPIV3Schema", {}).get("properties", {}).get("spec", {})
        properties = spec.get("properties", {})
        if "runtimePatches" in properties:
            pod_fields = _patch_pod_spec_properties(properties["runtimePatches"])
            if "terminationGracePeriodSeconds" in pod_fields:
                return SpecGeneration.V2_3
            return SpecGeneration.V2_2
        if "podTemplateOverrides" in properties:
            return SpecGeneration.V2_1
    return SpecGeneration.V2_2


#: The field only one spec generation has -> the generation a CRD that refuses it serves.
_OTHER_GENERATION = {"runtimePatches": SpecGeneration.V2_1, "podTemplateOverrides": SpecGeneration.V2_2}
_UNKNOWN_SPEC_FIELD = re.compile(r'unknown field \\?"spec\.(runtimePatches|podTemplateOverrides)\\?"')


_UNKNOWN_GRACE_FIELD = re.compile(
    r'unknown field \\?"spec\.runtimePatches\[\d+\]\.[^"\\]*\.terminationGracePeriodSeconds\\?"'
)


def with_generation_hint(error: KubeApiError) -> KubeApiError:
    """A strict 400 ``unknown field "spec.runtimePatches"`` (or ``podTemplateOverrides``, or a
    patch's ``terminationGracePeriodSeconds``) with the ``spec_generation`` to set: the job was
    built for another generation, because the CRD could not be read to detect it (``auto``
    assumes v2.2 then) or it was set wrong."""
    found = _UNKNOWN_SPEC_FIELD.search(error.server_message) if error.status == 400 else None
    grace = _UNKNOWN_GRACE_FIELD.search(error.server_message) if error.status == 400 else None
    if found is None and grace is None:
        return error
    field = "a runtime patch's terminationGracePeriodSeconds" if found is None else f"spec.{found.group(1)}"
    served = SpecGeneration.V2_2 if found is None else _OTHER_GENERATION[found.group(1)]
    hint = (
        f"The cluster's TrainJob CRD has no {field}: it serves the {served.value} spec "
        f"generation. Set spec_generation={served.value!r} (with 'auto' it is read from the CRD, which "
        "needs get on customresourcedefinitions.apiextensions.k8s.io; when that is refused, v2.2 is assumed)"
    )
    return KubeApiError(
        error.action, error.status, error.reason, f"{error.server_message}. {hint}", details=error.details
    )

"""The Kubeflow Trainer admission webhook's rules, checked before anything is created.

The Trainer's validating webhook (``failurePolicy: Fail``) runs the ``Validate``
functions of the runtime's plugins on every TrainJob. A TrainJob it refuses is
never created, and the task would fail with a server message about fields the
user never wrote. This module applies the same rules to the manifest and the
runtime it references, with the webhook's field paths and wording, and says which
operator parameter to change.

Read from kubeflow/trainer at v2.1.0, v2.2.1 and v2.3.0 (``pkg/webhooks/trainjob_webhook.go``,
``pkg/runtime/core/*trainingruntime.go``, ``pkg/runtime/framework/plugins/{jobset,torch,mpi,
xgboost,volcano}``, ``pkg/constants/constants.go``):

* the runtime exists (the webhook's ``specified clusterTrainingRuntime must be created
  before the TrainJob is created``; see ``KubernetesBackend.runtime``);
* ``runtimePatches[].manager`` is a domain-prefixed path (``validation.IsDomainPrefixedPath``);
* every replicated job named in a patch or ``podTemplateOverrides`` target exists in the
  runtime's template (v2.1.0 and v2.2.1 refuse it; v2.3.0 admits it and the JobSet
  fails later, so it is refused here at every version);
* no patch sets ``env`` on the ``node``, ``dataset-initializer`` or ``model-initializer``
  containers: trainer env belongs in ``spec.trainer.env``;
* ``spec.trainer.env`` holds none of the names the runtime's ML policy injects itself
  (torch: ``PET_*``; MPI: ``OMPI_MCA_*``, v2.3.0; XGBoost: ``DMLC_*``, v2.2.1+);
* a Volcano runtime's queue-name annotation is not empty: the annotations the webhook reads
  are the runtime template's (``spec.template.metadata.annotations``) overridden by the
  TrainJob's ``spec.annotations`` (v2.1.0) or by each runtime patch's
  ``trainingRuntimeSpec.template.metadata.annotations`` (v2.2.1, v2.3.0), never the TrainJob's
  own ``metadata.annotations`` (``pkg/runtime/core/trainingruntime.go``, ``newRuntimeInfo``).

Stricter than the webhook, because the job could only fail later: a container named in a
patch must exist in the runtime (the webhook merges it in as a container without an
image), a ``priority_class_name`` must be the runtime's (the TrainJob API cannot set it), and
the pod names JobSet derives from the TrainJob's name must fit in 63 characters: the JobSet
webhook refuses them (kubernetes-sigs/jobset ``pkg/webhooks/jobset_webhook.go``, "pod names
generated for this JobSet will exceed 63 characters") after the TrainJob was admitted.
Rules that the CRD schema enforces (types, enums, CEL) are left to the API server.

Not a refusal but a warning (:func:`grace_period_warning`): on v2.1 and v2.2 no TrainJob field
reaches the pods' ``terminationGracePeriodSeconds`` (added to runtime patches in v2.3.0), so
``checkpoint_grace_seconds`` cannot be applied and the runtime's own period holds.
"""

from __future__ import annotations

import re
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends.kubernetes.config import SpecGeneration
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.run import DNS_LABEL_MAX, JOBSET_POD_SUFFIX

#: Env names each ML policy sets in the node container itself (pkg/constants).
RESERVED_ENV_NAMES = {
    "torch": frozenset(
        {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
    ),
    "mpi": frozenset(
        {
            "OMPI_MCA_orte_default_hostfile",
            "OMPI_MCA_plm_rsh_args",
            "OMPI_MCA_orte_keep_fqdn_hostnames",
            "OMPI_MCA_orte_set_default_slots",
        }
    ),
    "xgboost": frozenset({"DMLC_TRACKER_URI", "DMLC_TRACKER_PORT", "DMLC_TASK_ID", "DMLC_NUM_WORKER"}),
}
VOLCANO_QUEUE_ANNOTATION = "scheduling.volcano.sh/queue-name"
#: Containers whose env may only come from ``spec.trainer``/``spec.initializer``, never a patch.
ENV_OWNED_CONTAINERS = frozenset({c.NODE, "dataset-initializer", "model-initializer"})

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_HTTP_PATH = re.compile(r"^[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$")


def domain_prefixed_path_errors(value: str) -> list[str]:
    """``validation.IsDomainPrefixedPath`` of k8s.io/apimachinery: ``<dns-subdomain>/<http path>``."""
    if not value:
        return ["Required value"]
    host, slash, path = value.partition("/")
    if not slash or not host or not path:
        return ['must be a domain-prefixed path (such as "acme.io/foo")']
    errors = []
    if len(host) > 253 or not _DNS_SUBDOMAIN.match(host):
        errors.append(
            f"{host!r}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
        )
    if not _HTTP_PATH.match(path):
        errors.append(f"{path!r}: Invalid path")
    return errors


def _dig(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]...`` of a manifest, or None where a level is missing."""
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _replicated_jobs(training_runtime_spec: Any) -> list[dict[str, Any]]:
    """The replicated jobs of a runtime's (or a patch's) ``spec.template``."""
    return _dig(training_runtime_spec, "template", "spec", "replicatedJobs") or []


def _pod_spec(replicated_job: dict[str, Any]) -> dict[str, Any]:
    return _dig(replicated_job, "template", "spec", "template", "spec") or {}


def _runtime_jobs(runtime: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """replicated job name (required by the JobSet schema) -> its pod spec, in a runtime's template."""
    return {job["name"]: _pod_spec(job) for job in _replicated_jobs(runtime.get("spec"))}


def _patched_jobs(
    trainjob: dict[str, Any], generation: SpecGeneration
) -> list[tuple[str | None, dict[str, Any]]]:
    """(replicated job name, pod spec patch) of every patch or override in the manifest."""
    spec = trainjob["spec"]
    if generation is SpecGeneration.V2_1:
        return [
            (target.get("name"), override.get("spec") or {})
            for override in spec.get("podTemplateOverrides") or []
            for target in override.get("targetJobs") or []
        ]
    return [
        (job.get("name"), _pod_spec(job))
        for patch in spec.get("runtimePatches") or []
        for job in _replicated_jobs(patch.get("trainingRuntimeSpec"))
    ]


TRAINJOB_ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"


def longest_pod_names(trainjob: dict[str, Any], runtime: dict[str, Any]) -> dict[str, str]:
    """replicated job -> the longest pod name JobSet will give it, as its webhook computes it.

    ``<jobset>-<replicatedJob>-<replicas - 1>-<pods - 1>-abcde``, the JobSet named after the
    TrainJob; the trainer's job (``trainjob-ancestor-step: trainer``, or ``node``) runs
    ``spec.trainer.numNodes`` pods, any other job its template's ``parallelism`` (the
    Trainer's pod-set count).
    """
    name = (trainjob.get("metadata") or {}).get("name", "")
    nodes = _dig(trainjob, "spec", "trainer", "numNodes") or 1
    longest = {}
    for job in _replicated_jobs(runtime.get("spec")):
        job_name = job.get("name", "")
        labels = _dig(job, "template", "metadata", "labels") or {}
        trainer = labels.get(TRAINJOB_ANCESTOR_LABEL) == "trainer" or job_name == c.NODE
        pods = nodes if trainer else (_dig(job, "template", "spec", "parallelism") or 1)
        replicas = job.get("replicas") or 1
        longest[job_name] = f"{name}-{job_name}-{replicas - 1}-{pods - 1}{JOBSET_POD_SUFFIX}"
    return longest


_RUNTIME_ANNOTATIONS = "the runtime's spec.template.metadata.annotations"


def _volcano_annotations(
    trainjob: dict[str, Any], runtime: dict[str, Any], v21: bool
) -> dict[str, tuple[str, str]]:
    """annotation -> (value, where it was set): the runtime info's annotations, which the
    Volcano plugin reads, merged as the Trainer merges them."""
    merged = {
        key: (value, _RUNTIME_ANNOTATIONS)
        for key, value in (_dig(runtime, "spec", "template", "metadata", "annotations") or {}).items()
    }
    if v21:
        overrides = [("spec.annotations", _dig(trainjob, "spec", "annotations"))]
    else:
        overrides = [
            ("spec.runtimePatches", _dig(patch, "trainingRuntimeSpec", "template", "metadata", "annotations"))
            for patch in _dig(trainjob, "spec", "runtimePatches") or []
        ]
    for source, values in overrides:
        merged.update({key: (value, f"the TrainJob's {source}") for key, value in (values or {}).items()})
    return merged


def check(
    trainjob: dict[str, Any],
    runtime: dict[str, Any],
    generation: SpecGeneration,
    *,
    priority_class_name: str | None = None,
) -> None:
    """Raise :class:`InvalidParameterError` for what the Trainer webhook (or the pod) would refuse.

    Keys are the webhook's field paths; each message says which parameter sets the field.
    """
    runtime_name = f"{runtime.get('kind', 'runtime')} {runtime.get('metadata', {}).get('name', '')!r}"
    v21 = generation is SpecGeneration.V2_1
    errors = {
        **({} if v21 else _manager_errors(trainjob["spec"])),
        **_patch_errors(trainjob, runtime, generation, runtime_name),
        **_reserved_env_errors(trainjob["spec"], runtime),
        **_volcano_queue_errors(trainjob, runtime, v21),
        **_pod_name_errors(trainjob, runtime, runtime_name),
        **_priority_class_errors(runtime, runtime_name, priority_class_name),
    }
    if errors:
        raise InvalidParameterError(errors, kind="TrainJob (refused by the Trainer admission rules)")


def _manager_errors(spec: dict[str, Any]) -> dict[str, str]:
    """A runtime patch's ``manager`` must be a domain-prefixed path (v2.2+ only has patches)."""
    errors = {}
    for patch in spec.get("runtimePatches") or []:
        if problems := domain_prefixed_path_errors(patch.get("manager", "")):
            errors["spec.runtimePatches.manager"] = f"{patch.get('manager', '')!r}: " + "; ".join(problems)
    return errors


def _patch_errors(
    trainjob: dict[str, Any], runtime: dict[str, Any], generation: SpecGeneration, runtime_name: str
) -> dict[str, str]:
    """Pod patches may only name jobs and containers the runtime has, and set no env on the ones it owns."""
    v21 = generation is SpecGeneration.V2_1
    patches_path = "spec.podTemplateOverrides" if v21 else "spec.runtimePatches"
    errors = {}
    jobs = _runtime_jobs(runtime)
    for job_name, pod_spec in _patched_jobs(trainjob, generation):
        if job_name not in jobs:
            what = "targetJob" if v21 else "replicated job"
            errors[patches_path] = (
                f"must not have {what} that doesn't exist in the runtime job template: {job_name!r} is not "
                f"among the replicated jobs of {runtime_name} ({', '.join(sorted(jobs)) or 'none'}); "
                "use a runtime with a 'node' job (runtime_name)"
            )
            continue
        for kind in ("containers", "initContainers"):
            for container in pod_spec.get(kind) or []:
                name = container.get("name")
                if name not in {known.get("name") for known in jobs[job_name].get(kind) or []}:
                    errors[patches_path] = (
                        f"must not have {kind[:-1]} that doesn't exist in the runtime job {job_name}: "
                        f"{name!r} is not in {runtime_name}"
                    )
                elif kind == "containers" and container.get("env") and name in ENV_OWNED_CONTAINERS:
                    errors[patches_path] = (
                        "must not have envs for the dataset-initializer, model-initializer, node containers"
                    )
    return errors


def _reserved_env_errors(spec: dict[str, Any], runtime: dict[str, Any]) -> dict[str, str]:
    """``envs`` must not set what the runtime's ML policy sets in each node (torch's ``PET_*``, MPI's, ...)."""
    errors = {}
    ml_policy = (runtime.get("spec") or {}).get("mlPolicy") or {}
    env_names = {entry.get("name") for entry in spec["trainer"].get("env") or []}
    for policy, names in RESERVED_ENV_NAMES.items():
        if policy in ml_policy and (reserved := sorted(names & env_names)):
            errors["spec.trainer.env"] = (
                f"must not have reserved envs, invalid envs configured: [{' '.join(reserved)}] "
                f"(the {policy} runtime sets them for each node; remove them from envs)"
            )
    return errors


def _volcano_queue_errors(trainjob: dict[str, Any], runtime: dict[str, Any], v21: bool) -> dict[str, str]:
    """Under a Volcano pod group, an empty queue annotation is refused; the message names who set it."""
    if "volcano" not in ((runtime.get("spec") or {}).get("podGroupPolicy") or {}):
        return {}
    queue, source = _volcano_annotations(trainjob, runtime, v21).get(VOLCANO_QUEUE_ANNOTATION, (None, ""))
    if queue != "":
        return {}
    fix = {
        "the TrainJob's spec.annotations": "; remove it from metadata_annotations",
        _RUNTIME_ANNOTATIONS: "; use a runtime that names a queue (runtime_name)",
    }.get(source, "")
    return {
        f"spec.annotations[{VOLCANO_QUEUE_ANNOTATION}]": (
            f"Volcano queue name must not be empty (set empty by {source}{fix})"
        )
    }


def _pod_name_errors(trainjob: dict[str, Any], runtime: dict[str, Any], runtime_name: str) -> dict[str, str]:
    """The pods JobSet will name must fit a DNS label: JobSet refuses them only after admission."""
    spec = trainjob["spec"]
    job_name = (trainjob.get("metadata") or {}).get("name", "")
    for replicated_job, pod_name in longest_pod_names(trainjob, runtime).items():
        if len(pod_name) > DNS_LABEL_MAX:
            return {
                "run_name": (
                    f"{job_name!r} is too long for {runtime_name} with {spec['trainer'].get('numNodes', 1)} "
                    f"node(s): JobSet would name its {replicated_job!r} pods like {pod_name} "
                    f"({len(pod_name)} characters, at most {DNS_LABEL_MAX}) and refuse the job after it was "
                    f"admitted; shorten the run name by {len(pod_name) - DNS_LABEL_MAX} or more characters"
                )
            }
    return {}


def _priority_class_errors(
    runtime: dict[str, Any], runtime_name: str, priority_class_name: str | None
) -> dict[str, str]:
    """A pod priority class can only come from the runtime: the TrainJob API has no field for it."""
    if priority_class_name is None:
        return {}
    has = _runtime_jobs(runtime).get(c.NODE, {}).get("priorityClassName")
    if has == priority_class_name:
        return {}
    return {
        "priority_class_name": (
            f"the TrainJob API has no field for a pod priorityClassName, and {runtime_name} sets "
            f"{has!r}: use a runtime that sets {priority_class_name!r}, or give Kueue's workload "
            "priority with job_labels='kueue.x-k8s.io/priority-class=<name>'"
        )
    }


#: Kubernetes' own ``terminationGracePeriodSeconds`` when a pod spec sets none.
KUBERNETES_DEFAULT_GRACE_SECONDS = 30


def grace_period_warning(
    grace_seconds: int | None, runtime: dict[str, Any], generation: SpecGeneration
) -> str | None:
    """One line when the run's grace period cannot reach its pods and the one that holds is shorter.

    From v2.3 the runtime patch sets it (:func:`.manifest.build_trainjob`). Before, the runtime's
    ``node`` pod template decides: its ``terminationGracePeriodSeconds``, else Kubernetes' 30 s.
    """
    if grace_seconds is None or generation is SpecGeneration.V2_3:
        return None
    runtime_name = f"{runtime.get('kind', 'runtime')} {runtime.get('metadata', {}).get('name', '')!r}"
    own = _runtime_jobs(runtime).get(c.NODE, {}).get("terminationGracePeriodSeconds")
    holds = KUBERNETES_DEFAULT_GRACE_SECONDS if own is None else int(own)
    if holds >= grace_seconds:
        return None
    source = f"Kubernetes' default: {runtime_name} sets none" if own is None else f"set by {runtime_name}"
    carrier = "podTemplateOverrides" if generation is SpecGeneration.V2_1 else "runtimePatches"
    return (
        f"checkpoint_grace_seconds={grace_seconds} cannot reach the training pods: the cluster serves "
        f"the Kubeflow Trainer {generation.value} TrainJob API, whose spec.{carrier} has no "
        f"terminationGracePeriodSeconds, so the pods get {holds} s ({source}) to save their state when "
        f"preempted. Upgrade Kubeflow Trainer to v2.3 or later (spec_generation='v2.3' if it is already "
        f"v2.3 and its CRD cannot be read here), or set terminationGracePeriodSeconds: {grace_seconds} "
        f"in the node pod template of {runtime_name}"
    )

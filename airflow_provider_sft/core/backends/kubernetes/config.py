"""Where and how TrainJobs run: the Kubernetes backend's configuration, validated in one place.

Everything here is cluster configuration, not training (that is ``SFTParams``).
The operator, the KFP runner and the tests build it with :meth:`KubernetesConfig.build`,
which reports every bad value at once, naming the parameter, before anything is sent.
Text forms are accepted where a value comes from a template, the trigger form or a
REST ``conf``: ``"k=v,k=v"`` for label maps, JSON for tolerations and affinity.
"""

from __future__ import annotations

import json
import re
import typing
import warnings
from enum import Enum
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends.kubernetes.kinds import JobKind
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.params import explain, kubernetes_quantity, parse_annotations, parse_labels

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
_TOLERATION_OPERATORS = {"Exists", "Equal"}
_TAINT_EFFECTS = {"NoSchedule", "PreferNoSchedule", "NoExecute"}
_AFFINITY_KEYS = {"nodeAffinity", "podAffinity", "podAntiAffinity"}


class SpecGeneration(str, Enum):
    AUTO = "auto"  # detect from the served CRD
    V2_1 = "v2.1"  # spec.labels/annotations + podTemplateOverrides
    V2_2 = "v2.2"  # runtimePatches (v2.2)
    V2_3 = "v2.3"  # runtimePatches that may set the pods' terminationGracePeriodSeconds (v2.3 and later)


class RuntimeKind(str, Enum):
    CLUSTER = c.CLUSTER_TRAINING_RUNTIME_KIND  # cluster-scoped, installed by the platform team
    NAMESPACED = c.TRAINING_RUNTIME_KIND  # in the TrainJob's namespace


def _json_or_value(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ValueError(f"must be JSON: {exc}") from None
    return value


class KubernetesConfig(BaseModel):
    """The TrainJob's cluster settings (operator parameters of the same names)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str = "default"
    # TrainJob (Kubeflow Trainer v2) or PyTorchJob (Training Operator v1): the same lifecycle.
    job_kind: JobKind = JobKind.TRAINJOB
    runtime_name: str = c.DEFAULT_RUNTIME
    runtime_kind: RuntimeKind = RuntimeKind.CLUSTER
    pvc_name: str | None = None  # the workspace PVC: required to submit (outputs must outlive the pod)
    workspace_mount_path: str = c.DEFAULT_WORKSPACE_MOUNT
    spec_generation: SpecGeneration = SpecGeneration.AUTO
    image: str | None = Field(
        None, validate_default=True
    )  # overrides the runtime's trainer image (it needs instructlab-training)
    service_account: str | None = None
    job_labels: dict[str, str] = {}  # on the TrainJob itself: kueue.x-k8s.io/queue-name, ...
    job_annotations: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    node_selector: dict[str, str] = {}
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    shm_size: str | None = None  # a memory-backed /dev/shm of this size in the node pods
    start_timeout_seconds: PositiveFloat | None = None  # how long the job may stay queued/pending
    # Forwarded as given (the KFP shim's TaskConfig): more trainer env entries (valueFrom allowed),
    # node pod volumes and node container mounts, and node container resources merged with
    # the training_resource_* ones (a different value for the same resource is an error).
    env: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    volume_mounts: list[dict[str, Any]] = []
    resources: dict[str, dict[str, Any]] = {}
    keep_failed_jobs: bool = False
    delete_on_success: bool = True
    # PyTorchJob only: runPolicy.schedulingPolicy.queue (Volcano; Kueue reads job_labels) and
    # runPolicy.ttlSecondsAfterFinished (the operator removes a finished job after that long).
    scheduling_queue: str | None = None
    ttl_seconds_after_finished: NonNegativeInt | None = None

    @classmethod
    def build(cls, **values: Any) -> KubernetesConfig:
        """Validate; one :class:`InvalidParameterError` lists every bad parameter.

        ``""`` means "not set" (a template or an empty form field renders ``""``), and so does
        ``None`` for a setting that cannot be None. ``start_timeout``, the old name of
        ``start_timeout_seconds`` (a ``kubernetes=`` settings dict may still use it), is taken
        with a ``DeprecationWarning``.
        """
        if "start_timeout" in values:
            values["start_timeout_seconds"] = renamed_start_timeout(
                values.pop("start_timeout"), values.get("start_timeout_seconds")
            )
        nullable = {
            name for name, f in cls.model_fields.items() if type(None) in typing.get_args(f.annotation)
        }
        kept = {k: v for k, v in values.items() if v != "" and (v is not None or k in nullable)}
        try:
            return cls.model_validate(kept)
        except ValidationError as exc:
            raise InvalidParameterError(explain(exc, model=cls)) from None

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if len(value) > 63 or not _DNS_LABEL.match(value):
            raise ValueError(f"must be a DNS-1123 label (lowercase alphanumerics and '-'), got {value!r}")
        return value

    @field_validator("runtime_name", "pvc_name", "service_account", "priority_class_name")
    @classmethod
    def _object_name(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 253 or not _DNS_SUBDOMAIN.match(value)):
            raise ValueError(f"must be a Kubernetes object name (a DNS-1123 subdomain), got {value!r}")
        return value

    @field_validator("image")
    @classmethod
    def _pytorchjob_has_an_image(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("job_kind") is JobKind.PYTORCHJOB and not value:
            raise ValueError(
                "is required for a PyTorchJob (Python with torch and instructlab-training): there is "
                "no runtime to take it from"
            )
        return value

    @field_validator("runtime_name", "runtime_kind", "spec_generation")
    @classmethod
    def _trainjob_only(cls, value: Any, info: ValidationInfo) -> Any:
        assert info.field_name is not None  # a field validator: pydantic names the field
        if (
            info.data.get("job_kind") is JobKind.PYTORCHJOB
            and value != cls.model_fields[info.field_name].default
        ):
            raise ValueError(f"applies to a TrainJob only (a PyTorchJob has no runtime), got {value!r}")
        return value

    @field_validator("scheduling_queue", "ttl_seconds_after_finished")
    @classmethod
    def _pytorchjob_only(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("job_kind") is not JobKind.PYTORCHJOB:
            raise ValueError(
                "applies to a PyTorchJob only (job_kind='PyTorchJob'); a TrainJob is queued by the "
                "kueue.x-k8s.io/queue-name label in job_labels"
            )
        return value

    @field_validator("workspace_mount_path")
    @classmethod
    def _mount_path(cls, value: str) -> str:
        if not value.startswith("/") or ":" in value:
            raise ValueError(f"must be an absolute path in the pod without ':', got {value!r}")
        return value.rstrip("/") or "/"

    @field_validator("job_labels", "node_selector", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> dict[str, str]:
        return parse_labels(value)

    @field_validator("job_annotations", mode="before")
    @classmethod
    def _annotations(cls, value: Any) -> dict[str, str]:
        return parse_annotations(value)

    @field_validator("tolerations", mode="before")
    @classmethod
    def _tolerations(cls, value: Any) -> list[dict[str, Any]]:
        value = _json_or_value(value) or []
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            raise ValueError("must be a list of tolerations (JSON objects)")
        for position, toleration in enumerate(value):
            where = f"item {position}"
            if not isinstance(toleration, dict):
                raise ValueError(
                    f"{where} must be an object such as {{'key': 'nvidia.com/gpu', 'operator': 'Exists'}}"
                )
            if unknown := set(toleration) - _TOLERATION_KEYS:
                raise ValueError(
                    f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_TOLERATION_KEYS)}"
                )
            operator = toleration.get("operator", "Equal")
            if operator not in _TOLERATION_OPERATORS:
                raise ValueError(f"{where}: operator must be Exists or Equal, got {operator!r}")
            if operator == "Exists" and toleration.get("value"):
                raise ValueError(f"{where}: a value must be empty when operator is Exists")
            if "effect" in toleration and toleration["effect"] not in _TAINT_EFFECTS:
                raise ValueError(f"{where}: effect must be one of {sorted(_TAINT_EFFECTS)}")
            if "tolerationSeconds" in toleration and toleration.get("effect") != "NoExecute":
                raise ValueError(f"{where}: tolerationSeconds needs effect NoExecute")
        return value

    @field_validator("affinity", mode="before")
    @classmethod
    def _affinity(cls, value: Any) -> dict[str, Any] | None:
        value = _json_or_value(value)
        if value in (None, {}):
            return None
        if not isinstance(value, dict):
            raise ValueError(
                "must be a Kubernetes Affinity object (nodeAffinity, podAffinity, podAntiAffinity)"
            )
        if unknown := set(value) - _AFFINITY_KEYS:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(_AFFINITY_KEYS)}")
        return value

    @field_validator("env", "volumes", "volume_mounts")
    @classmethod
    def _named(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for position, item in enumerate(value):
            if not isinstance(item.get("name"), str) or not item["name"]:
                raise ValueError(f"item {position} needs a 'name'")
        return value

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if unknown := set(value) - {"requests", "limits"}:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; allowed: limits, requests")
        return value

    @field_validator("shm_size", mode="before")
    @classmethod
    def _shm(cls, value: Any) -> str | None:
        return None if value in (None, "") else kubernetes_quantity(value)


def renamed_start_timeout(
    old: float | str | None,
    new: float | str | None,
    *,
    category: type[Warning] = DeprecationWarning,
) -> float | str | None:
    """``start_timeout_seconds``, or ``start_timeout`` (its name before it said its unit) with a warning.

    Both the operator parameter and a ``kubernetes=`` settings dict may still use the old name.
    """
    if old is None:
        return new
    if new not in (None, ""):
        raise InvalidParameterError(
            {"start_timeout": "is the old name of start_timeout_seconds: give only the new one"}
        )
    warnings.warn("start_timeout is deprecated: use start_timeout_seconds", category, stacklevel=3)
    return old

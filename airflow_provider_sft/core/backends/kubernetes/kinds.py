"""The two kinds of training job the Kubernetes backend submits, and what differs between them.

Everything else (the program's ConfigMap, the Secret, idempotent names, the one watch, pod
logs, cleanup) is the same code for both: only the API coordinates, the manifest and the
meaning of the status differ, and those live here and in :mod:`manifest` / :mod:`pytorchjob`.

- ``TrainJob`` (Kubeflow Trainer v2, ``trainer.kubeflow.org/v1alpha1``): a runtime reference,
  patched per spec generation; the controller's JobSet runs the ``node`` pods.
- ``PyTorchJob`` (Training Operator v1, ``kubeflow.org/v1``): Master and Worker replicas, built
  with ``kubeflow-training``'s own models (the ``pytorchjob`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from airflow_provider_sft.core import constants as c


class JobKind(str, Enum):
    TRAINJOB = c.TRAINJOB_KIND
    PYTORCHJOB = c.PYTORCHJOB_KIND


@dataclass(frozen=True)
class JobResource:
    """Where a kind of job lives in the API, and how its pods are found."""

    kind: JobKind
    group: str
    version: str
    plural: str
    crd_name: str
    pod_label: str  # the label the controller puts on the job's pods, with the job's name
    container: str  # the container that runs the program
    rank0_pod: str  # the name of the rank-0 pod after the job's name: where its log is read

    def is_rank0_pod(self, job_name: str, pod_name: str) -> bool:
        return pod_name.startswith(job_name + self.rank0_pod)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


TRAINJOB = JobResource(
    JobKind.TRAINJOB,
    c.TRAINER_GROUP,
    c.TRAINER_VERSION,
    c.TRAINJOB_PLURAL,
    c.TRAINJOB_CRD_NAME,
    c.LABEL_JOBSET_NAME,
    c.NODE,
    f"-{c.NODE}-0-0-",  # the JobSet's replicated job 0, completion index (node rank) 0
)
PYTORCHJOB = JobResource(
    JobKind.PYTORCHJOB,
    c.TRAINING_OPERATOR_GROUP,
    c.TRAINING_OPERATOR_VERSION,
    c.PYTORCHJOB_PLURAL,
    c.PYTORCHJOB_CRD_NAME,
    c.LABEL_TRAINING_JOB_NAME,
    c.PYTORCH_CONTAINER,
    "-master-0",
)
RESOURCES = {resource.kind: resource for resource in (TRAINJOB, PYTORCHJOB)}


def resource_of(kind: str | JobKind | None) -> JobResource:
    """The resource of a kind name (a job handle written before kinds existed is a TrainJob)."""
    return RESOURCES[JobKind(kind or c.TRAINJOB_KIND)]

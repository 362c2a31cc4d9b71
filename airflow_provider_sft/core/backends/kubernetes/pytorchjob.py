"""Kubeflow Training Operator v1 ``PyTorchJob`` manifests, with ``kubeflow-training``'s own models.

The same :class:`~.manifest.NodeWork` a TrainJob carries, as replicas: one ``Master`` (rank 0)
and ``resource_num_workers - 1`` ``Worker``\\ s, each running the pod program in the
``pytorch`` container (the operator reads the rendezvous port from its ``pytorchjob-port``), with
``nprocPerNode`` from ``resource_num_procs_per_worker``. ``restartPolicy: Never`` and
``runPolicy.backoffLimit: 0``: Airflow owns retries, and a retried task re-submits a fresh job.
``runPolicy`` also carries the timeout (``activeDeadlineSeconds``), ``cleanPodPolicy`` (pods
stay for their logs until the job is deleted), ``ttlSecondsAfterFinished`` and the
``schedulingPolicy.queue`` for Volcano; Kueue reads ``job_labels`` as for a TrainJob. The pod
template (Master and Workers) carries the run's ``terminationGracePeriodSeconds``
(``checkpoint_grace_seconds``), which every Training Operator v1 release accepts.

``kubeflow-training`` needs ``kubernetes<36``: it is the ``pytorchjob`` extra, imported only
when a PyTorchJob is built.
"""

from __future__ import annotations

import functools
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends.kubernetes.config import KubernetesConfig
from airflow_provider_sft.core.backends.kubernetes.manifest import NodeWork, job_metadata, pod_spec_patch
from airflow_provider_sft.core.errors import InvalidParameterError

MASTER, WORKER = "Master", "Worker"


def _models() -> Any:
    try:
        from kubeflow.training import models
    except ImportError:
        raise InvalidParameterError(
            {
                "job_kind": "PyTorchJob needs the Kubeflow Training Operator SDK: pip install "
                "'airflow-provider-sft[pytorchjob]' (kubeflow-training)"
            }
        ) from None
    return models


@functools.cache
def _serializer() -> Any:
    from kubeflow.training.api_client import ApiClient

    return ApiClient()


def build_pytorchjob(
    work: NodeWork,
    config: KubernetesConfig,
    *,
    has_pull_secret: bool = False,
    active_deadline_seconds: int | None = None,
) -> dict[str, Any]:
    """The PyTorchJob for ``work`` (its image is ``config.image``: the config requires one)."""
    assert config.image, "KubernetesConfig requires an image for a PyTorchJob"
    models = _models()
    spec = pod_spec_patch(work.name, config, has_pull_secret=has_pull_secret, container=c.PYTORCH_CONTAINER)
    (container,) = spec["containers"]
    container.update(
        image=config.image,
        command=work.command,
        env=work.env,
        resources=work.resources,
        ports=[{"name": c.PYTORCH_PORT_NAME, "containerPort": c.PYTORCH_PORT}],
    )
    if config.priority_class_name:  # a PyTorchJob's pod template takes it (a TrainJob's runtime decides)
        spec["priorityClassName"] = config.priority_class_name
    if work.termination_grace_seconds is not None:  # time to save a full state when preempted
        spec["terminationGracePeriodSeconds"] = work.termination_grace_seconds
    template = {"metadata": work.pod_metadata, "spec": {**spec, "restartPolicy": "Never"}}
    replicas = {
        MASTER: models.KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy="Never", template=template)
    }
    if work.num_nodes > 1:
        replicas[WORKER] = models.KubeflowOrgV1ReplicaSpec(
            replicas=work.num_nodes - 1, restart_policy="Never", template=template
        )
    run_policy = models.KubeflowOrgV1RunPolicy(
        backoff_limit=0,
        clean_pod_policy="None",  # the rank-0 log stays readable until the job is deleted
        active_deadline_seconds=None
        if active_deadline_seconds is None
        else max(1, int(active_deadline_seconds)),
        ttl_seconds_after_finished=config.ttl_seconds_after_finished,
        scheduling_policy=models.KubeflowOrgV1SchedulingPolicy(queue=config.scheduling_queue)
        if config.scheduling_queue
        else None,
    )
    job = models.KubeflowOrgV1PyTorchJob(
        api_version=f"{c.TRAINING_OPERATOR_GROUP}/{c.TRAINING_OPERATOR_VERSION}",
        kind=c.PYTORCHJOB_KIND,
        metadata=job_metadata(work, config),
        spec=models.KubeflowOrgV1PyTorchJobSpec(
            pytorch_replica_specs=replicas,
            nproc_per_node="auto" if work.procs_per_node is None else str(work.procs_per_node),
            run_policy=run_policy,
        ),
    )
    return _serializer().sanitize_for_serialization(job)

"""Training runs as Kubeflow Trainer TrainJobs or Training Operator v1 PyTorchJobs, a module per job:

``config``    the backend's settings, validated in one place
``kinds``     the two kinds of job: API coordinates, pod label, rank-0 pod (what differs)
``retry``     the one retry policy (tenacity) and ``KubeApiError``
``client``    the API calls, async (``kubernetes_asyncio``), each with a request timeout
``manifest``  what the node pods run (``NodeWork``); TrainJob, Secret and ConfigMap manifests (pure)
``pytorchjob`` the PyTorchJob manifest, with kubeflow-training's models (the ``pytorchjob`` extra)
``admission`` the Trainer admission webhook's rules, checked before anything is created (pure)
``status``    what a job's status and its pods' events mean, for both kinds (pure)
``watch``     the one wait: a watch driven by the pure ``WatchCursor``
``logs``      the rank-0 pod's log, followed or tailed
``backend``   ``KubernetesBackend``: submit, poll, wait, complete, cancel
"""

from airflow_provider_sft.core.backends.kubernetes.backend import Credentials, KubernetesBackend, result_of
from airflow_provider_sft.core.backends.kubernetes.config import KubernetesConfig, RuntimeKind, SpecGeneration
from airflow_provider_sft.core.backends.kubernetes.retry import KubeApiError
from airflow_provider_sft.core.backends.kubernetes.status import JobPhase, JobState

__all__ = [
    "Credentials",
    "JobPhase",
    "JobState",
    "KubeApiError",
    "KubernetesBackend",
    "KubernetesConfig",
    "RuntimeKind",
    "SpecGeneration",
    "result_of",
]

"""Where training runs: one contract (:class:`TrainingBackend`), several implementations.

``local`` runs the entrypoint as a process on this machine (the embedded backend);
``kubernetes`` submits it as a Kubeflow Trainer TrainJob.
"""

from typing import Any

from airflow_provider_sft.core.backends.base import (
    BackendName,
    JobHandle,
    JobResult,
    JobStatus,
    LogSink,
    TrainingBackend,
)

__all__ = ["BackendName", "JobHandle", "JobResult", "JobStatus", "LogSink", "TrainingBackend", "get_backend"]


def get_backend(name: str | BackendName, **config: Any) -> TrainingBackend:
    """Instantiate a backend by name (the operator's ``backend=`` argument)."""
    backend = BackendName(name)
    if backend is BackendName.LOCAL:
        from airflow_provider_sft.core.backends.local import LocalProcessBackend

        return LocalProcessBackend(**config)
    from airflow_provider_sft.core.backends.kubernetes import KubernetesBackend

    return KubernetesBackend(**config)

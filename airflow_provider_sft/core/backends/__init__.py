"""Where training runs: one contract (:class:`TrainingBackend`), several implementations.

``local`` runs the entrypoint as a process on this machine (the embedded backend);
``kubernetes`` submits it as a Kubeflow Trainer TrainJob (or a PyTorchJob). Which one runs is
chosen by the type of the config, in :func:`airflow_provider_sft.core.backends.factory.build_backend`.
"""

from airflow_provider_sft.core.backends.base import (
    TRAINING_JOB_XCOM_KEY,
    BackendName,
    Credentials,
    JobHandle,
    JobResult,
    JobStatus,
    LogSink,
    TrainingBackend,
)

__all__ = [
    "TRAINING_JOB_XCOM_KEY",
    "BackendName",
    "Credentials",
    "JobHandle",
    "JobResult",
    "JobStatus",
    "LogSink",
    "TrainingBackend",
]

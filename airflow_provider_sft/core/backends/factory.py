"""The one place a training backend is built: chosen by the type of its config.

As Kubeflow's ``TrainerClient(backend_config=...)`` does: a :class:`LocalConfig` runs on this
machine, a :class:`KubernetesConfig` as a TrainJob or PyTorchJob. The operators, the validate
task and the KFP runner all come here; what is particular to them (an Airflow connection, the
KFP pod's environment) is turned into a config and a ``connect`` before, never into a backend.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from airflow_provider_sft.core.backends.base import BackendName, Credentials, TrainingBackend
from airflow_provider_sft.core.backends.kubernetes.backend import Connector, KubernetesBackend
from airflow_provider_sft.core.backends.kubernetes.config import KubernetesConfig
from airflow_provider_sft.core.backends.local import LocalConfig, LocalProcessBackend
from airflow_provider_sft.core.errors import InvalidParameterError

BackendConfig = LocalConfig | KubernetesConfig

#: The config type each backend name stands for (the operators' ``backend=``, ``SFT_BACKEND``).
CONFIG_TYPES: dict[BackendName, type[BackendConfig]] = {
    BackendName.LOCAL: LocalConfig,
    BackendName.KUBERNETES: KubernetesConfig,
}


def config_type(name: str | BackendName) -> type[BackendConfig]:
    """The config type of the backend called ``name``; :class:`InvalidParameterError` naming
    ``backend`` for a name no backend has."""
    try:
        return CONFIG_TYPES[BackendName(name)]
    except ValueError:
        raise InvalidParameterError(
            {"backend": f"must be one of {[b.value for b in BackendName]}, got {name!r}"}
        ) from None


def build_backend(
    config: BackendConfig,
    *,
    credentials: Credentials | None = None,
    connect: Connector | None = None,
    run_labels: Mapping[str, str] | None = None,
) -> TrainingBackend:
    """The backend that runs on ``config``.

    :param credentials: the run's secrets (a process's environment, a job's Secret).
    :param connect: how a Kubernetes backend reaches its API server (an Airflow connection's
        ``SFTTrainingHook.connect``); by default ``KUBERNETES_SERVER_URL`` + ``KUBERNETES_AUTH_TOKEN``,
        else the in-cluster service account, read now so a missing one fails before any work.
    :param run_labels: the DAG/task/run identifiers a Kubernetes backend puts on its jobs.
    """
    credentials = credentials or Credentials()
    if isinstance(config, LocalConfig):
        return LocalProcessBackend(config, credentials=credentials)
    if isinstance(config, KubernetesConfig):
        return KubernetesBackend(
            config=config,
            connect=connect or _environment_connect(),
            credentials=credentials,
            run_labels=dict(run_labels or {}),
        )
    raise TypeError(
        f"No backend runs on a {type(config).__name__}: pass one of "
        f"{', '.join(t.__name__ for t in CONFIG_TYPES.values())}"
    )


def _environment_connect() -> Connector:
    from airflow_provider_sft.core.backends.kubernetes.client import connect, environment_configuration

    return functools.partial(connect, environment_configuration())

"""Where the workspace is, and where the tasks that touch it run.

Two workspace modes on the ``kubernetes`` backend:

* ``cluster`` (the default): only the cluster mounts the PVC, at ``pvc_mount_path``
  (``/workspace``). Dataset resolution and model export run as one-node TrainJobs next to
  the data (the pod program's ``resolve`` and ``export`` steps); their small JSON results
  come back to XCom, and the loss chart is drawn on the Airflow side from them.
* ``shared``: the Airflow workers mount the same PVC at ``workspace`` (a KubernetesExecutor
  ``pod_override``, a Celery worker with a ReadWriteMany mount), and the steps run in the task.

The ``local`` backend always runs the steps in the task, on ``workspace``. A step runs where the
workspace is: on the local backend's config when this worker sees it, else on the Kubernetes one.
Every backend comes from the one ``build_backend``; this module only turns the operators'
parameters and their ``kubernetes`` connection into its config.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends.base import Credentials, TrainingBackend
from airflow_provider_sft.core.backends.factory import BackendConfig, build_backend, config_type
from airflow_provider_sft.core.backends.kubernetes.config import KubernetesConfig
from airflow_provider_sft.core.backends.local import LocalConfig
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.files import checked_root
from airflow_provider_sft.core.run import dag_run_name, run_name
from airflow_provider_sft.hooks.sft import SFTTrainingHook
from airflow_provider_sft.operators.training_log import log_training_line


class WorkspaceMode(str, Enum):
    CLUSTER = "cluster"  # only the training cluster mounts the PVC
    SHARED = "shared"  # the worker mounts it too, at the same path


STEP_TEMPLATE_FIELDS = ("backend", "workspace_mode", "pvc_mount_path", "kubernetes", "kubernetes_conn_id")


def workspace_mode(backend: str, mode: str | None) -> WorkspaceMode | None:
    """The mode for ``backend`` (None: a backend on this machine), ``""``/None meaning the default."""
    if not issubclass(config_type(backend), KubernetesConfig):
        return None  # only a cluster's runs see the workspace on a volume of their own
    try:
        return WorkspaceMode(mode or WorkspaceMode.CLUSTER.value)
    except ValueError:
        raise InvalidParameterError(
            {"workspace_mode": f"must be 'cluster' or 'shared', got {mode!r}"}
        ) from None


def workspace_root(backend: str, mode: str | None, workspace: str, pvc_mount_path: str | None) -> str:
    """Where the workspace steps see the workspace, checked by the one confinement helper.

    ``pvc_mount_path`` in ``cluster`` mode (``/workspace`` by default), else ``workspace``;
    :class:`InvalidParameterError` naming the field for ``/``, a system or a home directory.
    """
    if workspace_mode(backend, mode) is WorkspaceMode.CLUSTER:
        root, field = pvc_mount_path or c.DEFAULT_WORKSPACE_MOUNT, "pvc_mount_path"
    else:
        root, field = str(workspace), "workspace"
    checked_root(root, field=field)
    return root


def run_labels(context: Any | None) -> dict[str, str]:
    ti = context.get("ti") if context else None
    if context is None or ti is None:
        return {}
    return {
        c.LABEL_DAG_ID: ti.dag_id,
        c.LABEL_TASK_ID: ti.task_id,
        c.LABEL_RUN_ID: context["run_id"],
        c.LABEL_MAP_INDEX: str(getattr(ti, "map_index", -1)),
    }


def kubernetes_config(conn_id: str | None, settings: dict[str, Any]) -> KubernetesConfig:
    """``settings`` (``KubernetesConfig`` fields) validated, the namespace defaulting to the
    ``kubernetes`` connection's, else ``default``."""
    values = dict(settings)
    if not values.get("namespace"):
        values["namespace"] = SFTTrainingHook(kubernetes_conn_id=conn_id).get_namespace() or "default"
    return KubernetesConfig.build(**values)


def backend_config(backend: str, conn_id: str | None, settings: dict[str, Any]) -> BackendConfig:
    """The config of the backend an operator's ``backend=`` names (``settings``: the Kubernetes ones)."""
    if issubclass(config_type(backend), KubernetesConfig):
        return kubernetes_config(conn_id, settings)
    return LocalConfig()


def connected_backend(
    config: BackendConfig, *, conn_id: str | None, context: Any | None, credentials: Credentials
) -> TrainingBackend:
    """The backend of ``config``, reaching a cluster through the ``kubernetes`` connection."""
    return build_backend(
        config,
        credentials=credentials,
        connect=SFTTrainingHook(kubernetes_conn_id=conn_id).connect,
        run_labels=run_labels(context),
    )


def dag_run_dir_name(operator: Any, context: Any) -> str:
    """The DAG run's directory under ``runs/``: the resolve task's dataset and the train task's
    model, metrics and chart, all in one place.

    A DAG with two tasks of ``operator``'s kind (two trainings, two datasets) gives each its own
    directory (the task id is in the name), so they never write over each other.
    """
    ti = context.get("ti")
    if ti is None:  # executed outside a DAG run (a test, a REPL)
        return run_name(context.get("run_id"), operator.task_id)
    dag = getattr(operator, "dag", None) if getattr(operator, "has_dag", lambda: True)() else None
    siblings = [task for task in getattr(dag, "tasks", []) if isinstance(task, type(operator))]
    step = ti.task_id if len(siblings) > 1 else None
    return dag_run_name(ti.dag_id, context["run_id"], getattr(ti, "map_index", -1), step=step)


class WorkspaceStepsMixin:
    """Runs a workspace step here or, in ``cluster`` mode, as a TrainJob next to the PVC.

    :param backend: ``local`` or ``kubernetes``. (templated)
    :param workspace_mode: on ``kubernetes``: ``cluster`` (default) or ``shared``. (templated)
    :param pvc_mount_path: where the PVC is mounted in the cluster's pods (``cluster`` mode). (templated)
    :param kubernetes: the TrainJob settings of the step, the ``SFTTrainOperator`` parameters of
        the same names: ``namespace``, ``pvc_name`` (required), ``runtime_name``, ``image``,
        ``service_account``, ``job_labels``, ``tolerations``, ``node_selector``... (templated)
    :param kubernetes_conn_id: a cncf.kubernetes ``kubernetes`` connection. (templated)
    """

    workspace: str

    def _init_steps(
        self,
        backend: str,
        workspace_mode: str | None,
        pvc_mount_path: str | None,
        kubernetes: dict[str, Any] | None,
        kubernetes_conn_id: str | None,
    ) -> None:
        self.backend = backend
        self.workspace_mode = workspace_mode
        self.pvc_mount_path = pvc_mount_path
        self.kubernetes = kubernetes
        self.kubernetes_conn_id = kubernetes_conn_id

    @property
    def in_cluster(self) -> bool:
        return workspace_mode(self.backend, self.workspace_mode) is WorkspaceMode.CLUSTER

    @property
    def step_workspace(self) -> str:
        """The workspace root as the step sees it; never ``/``, a system or a home directory."""
        return workspace_root(self.backend, self.workspace_mode, self.workspace, self.pvc_mount_path)

    def step_run_name(self, context: Any) -> str:
        """This task's own job name (a step never takes the training job's name)."""
        ti = context.get("ti")
        if ti is None:  # executed outside a DAG run (a test, a REPL)
            return run_name(context.get("run_id"), self.task_id)  # type: ignore[attr-defined]
        return dag_run_name(ti.dag_id, context["run_id"], getattr(ti, "map_index", -1), step=ti.task_id)

    def step_config(self) -> BackendConfig:
        """Where the steps run: on this worker when it sees the workspace (the local backend,
        ``shared`` mode), else as a job next to the PVC."""
        if not self.in_cluster:
            return LocalConfig()
        settings = {**(self.kubernetes or {}), "workspace_mount_path": self.step_workspace}
        return kubernetes_config(self.kubernetes_conn_id, settings)

    def run_step(
        self,
        context: Any,
        step: str,
        config: dict[str, Any],
        *,
        secret_env: dict[str, str] | None = None,
        resources: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        secret_env = dict(secret_env or {})
        hf_token = secret_env.pop(c.HF_TOKEN_ENV, None)
        backend = connected_backend(
            self.step_config(),
            conn_id=self.kubernetes_conn_id,
            context=context,
            credentials=Credentials(hf_token=hf_token, env=secret_env),
        )
        name = self.step_run_name(context)
        timeout = self.execution_timeout.total_seconds() if self.execution_timeout else None  # type: ignore[attr-defined]
        return backend.run_step(
            step, name, config, on_log=log_training_line, timeout_seconds=timeout, resources=resources
        )

"""Check a whole pipeline run's input before its first task does any work."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends.factory import config_type
from airflow_provider_sft.core.backends.kubernetes.config import KubernetesConfig
from airflow_provider_sft.core.checkpoint_grace import checked_checkpoint_grace_seconds
from airflow_provider_sft.core.dataset import DatasetOptions
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.files import checked_root, checked_target
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.publish import parse_destination
from airflow_provider_sft.core.results.efficiency import checked_gpu_hour_cost
from airflow_provider_sft.core.training.data_report import checked_max_dropped_fraction
from airflow_provider_sft.core.training.resume import checked_resume
from airflow_provider_sft.operators.failures import FinalInvalidParameterError
from airflow_provider_sft.operators.masking import mask_secret_envs
from airflow_provider_sft.operators.workspace import WorkspaceMode, workspace_mode, workspace_root


class ValidateRunOperator(BaseOperator):
    """Fail the DAG run at once, naming every bad field, before anything is resolved or submitted.

    It checks, all at once: ``conf`` keys the DAG has no param for (with the closest known name:
    a typo such as ``num_epoch`` would otherwise run with the default), every training parameter
    with its cross-field rules, the dataset options, the Kubernetes settings when
    ``backend="kubernetes"``, and every directory the run will write under or replace (through
    the one confinement helper, ``core/files.py``): ``workspace`` (and ``pvc_mount_path`` in
    ``cluster`` mode) is never ``/``, a system or a home directory; ``model_dir`` is never one
    either, nor the workspace, a run's directory, or an existing directory the provider did
    not create. The failure is not retried (``AirflowFailException``).

    :param training: the training parameters, as ``SFTTrainOperator`` takes them (the seed's, and
        ``validation_split`` with ``validation_frequency``, required when the split is > 0). (templated)
    :param dataset: ``format``, ``mapping``, ``on_bad_record``, ``split``, ``subset``,
        ``revision``. (templated)
    :param backend: ``local`` or ``kubernetes``; ``workspace_mode``: ``cluster`` or ``shared``. (templated)
    :param kubernetes: ``KubernetesConfig`` fields (``namespace``, ``pvc_name``, ...). (templated)
    :param workspace: the workspace root, as the other tasks take it. (templated)
    :param model_dir: the ``ExportModelOperator``'s ``model_dir``, when one is set. (templated)
    :param pvc_mount_path: where the pods mount the PVC in ``cluster`` mode. (templated)
    :param max_dropped_fraction: the data gate's share (0 to 1), as the prepare task takes it. (templated)
    :param resume: ``"auto"`` or ``"never"``, as the train task takes it. (templated)
    :param checkpoint_grace_seconds: as the train task takes it (1 to 3600 s, empty: derived). (templated)
    :param gpu_hour_cost: as the export task takes it (a number >= 0, empty: no cost). (templated)
    :param publish_to: as the export task takes it (``s3://bucket/prefix/``, ``hf://org/name[@revision]``,
        empty: the model stays in the workspace). (templated)
    :param aws_conn_id: the export's ``aws`` connection: with an ``s3://`` ``publish_to`` it must
        exist, found now rather than after the training. (templated)
    :param hf_conn_id: the same for an ``hf://`` ``publish_to`` and its ``huggingface`` connection. (templated)
    """

    template_fields: Sequence[str] = (
        "training",
        "dataset",
        "backend",
        "workspace_mode",
        "kubernetes",
        "workspace",
        "model_dir",
        "pvc_mount_path",
        "max_dropped_fraction",
        "resume",
        "checkpoint_grace_seconds",
        "gpu_hour_cost",
        "publish_to",
        "aws_conn_id",
        "hf_conn_id",
    )
    ui_color = "#fef9e7"

    def __init__(
        self,
        *,
        training: dict[str, Any],
        dataset: dict[str, Any] | None = None,
        backend: str = "local",
        workspace_mode: str | None = None,
        kubernetes: dict[str, Any] | None = None,
        workspace: str | None = None,
        model_dir: str | None = None,
        pvc_mount_path: str | None = None,
        max_dropped_fraction: float | str | None = None,
        resume: str | None = None,
        checkpoint_grace_seconds: int | str | None = None,
        gpu_hour_cost: float | str | None = None,
        publish_to: str | None = None,
        aws_conn_id: str | None = None,
        hf_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.gpu_hour_cost = gpu_hour_cost
        self.publish_to = publish_to
        self.aws_conn_id = aws_conn_id
        self.hf_conn_id = hf_conn_id
        self.max_dropped_fraction = max_dropped_fraction
        self.resume = resume
        self.checkpoint_grace_seconds = checkpoint_grace_seconds
        self.workspace = workspace
        self.model_dir = model_dir
        self.pvc_mount_path = pvc_mount_path
        self.training = training
        self.dataset = dataset
        self.backend = backend
        self.workspace_mode = workspace_mode
        self.kubernetes = kubernetes

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        mask_secret_envs((self.training or {}).get("envs"))

    def _publish_connection(self) -> None:
        """The destination parses, and the connection the export will publish through exists."""
        destination = parse_destination(self.publish_to)
        if destination is None:
            return
        field, conn_id = (
            ("aws_conn_id", self.aws_conn_id)
            if destination.scheme == "s3"
            else ("hf_conn_id", self.hf_conn_id)
        )
        if not conn_id:
            return  # boto3's own chain, or HF_TOKEN: nothing to look up
        from airflow.sdk.bases.hook import BaseHook

        from airflow_provider_sft.compat import AirflowNotFoundException

        try:
            BaseHook.get_connection(conn_id)
        except AirflowNotFoundException:
            raise InvalidParameterError(
                {
                    field: f"no connection {conn_id!r} (publish_to {destination.uri} needs it): define it, or leave it empty"
                }
            ) from None

    def problems(self, conf: dict[str, Any], known: Sequence[str]) -> dict[str, str]:
        problems: dict[str, str] = {}
        for key in conf:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                problems[key] = "unknown parameter" + (f"; did you mean {close[0]!r}?" if close else "")
        checks = [
            lambda: SFTParams.parse(self.training),
            lambda: DatasetOptions.build(**{k: v for k, v in (self.dataset or {}).items() if v != ""}),
            lambda: workspace_mode(self.backend, self.workspace_mode),
            self._data_gate,
            lambda: checked_resume(self.resume or c.DEFAULT_RESUME),
            lambda: checked_checkpoint_grace_seconds(self.checkpoint_grace_seconds),
            lambda: checked_gpu_hour_cost(self.gpu_hour_cost),
            self._publish_connection,
            self._directories,
            self._backend,
        ]
        for check in checks:
            try:
                check()
            except InvalidParameterError as error:
                problems.update(error.errors)
        return problems

    def _data_gate(self) -> None:
        if self.max_dropped_fraction is not None:
            checked_max_dropped_fraction(self.max_dropped_fraction)

    def _directories(self) -> None:
        """The roots the run writes under and the directory its model replaces, before any task writes."""
        if self.workspace:
            checked_root(self.workspace, field="workspace")
        if not (self.workspace or self.pvc_mount_path):
            return
        root = workspace_root(self.backend, self.workspace_mode, self.workspace or "", self.pvc_mount_path)
        if self.model_dir:
            # In ``cluster`` mode the model's directory is on the PVC, seen only by the pods: its
            # contents are checked there, by the export step itself.
            local = workspace_mode(self.backend, self.workspace_mode) is not WorkspaceMode.CLUSTER
            checked_target(self.model_dir, field="model_dir", workspace=root, check_contents=local)

    def _backend(self) -> None:
        """What the backend's config refuses: the config type decides which rules apply."""
        if issubclass(config_type(self.backend), KubernetesConfig):
            self._kubernetes()
        else:
            self._local()

    def _local(self) -> None:
        workers = SFTParams.parse(self.training).resource_num_workers
        if workers != 1:
            raise InvalidParameterError(
                {
                    "resource_num_workers": f"the local backend runs one worker, got {workers}; use kubernetes for more"
                }
            )

    def _kubernetes(self) -> None:
        from airflow_provider_sft.core.backends.kubernetes.pull_secret import oci_pull_secret

        oci_pull_secret()  # the worker's environment, as the training task reads it
        config = KubernetesConfig.build(**(self.kubernetes or {}))
        if not config.pvc_name:
            raise InvalidParameterError(
                {"pvc_name": "is required on the kubernetes backend (the workspace PVC)"}
            )

    def execute(self, context: Any) -> None:
        dag_run = context.get("dag_run")
        conf = dict(getattr(dag_run, "conf", None) or {})
        # The DAG's declared params: context["params"] has the conf merged in, unknown keys too.
        problems = self.problems(conf, list(context["dag"].params))
        if problems:
            raise FinalInvalidParameterError(problems, kind="run")
        self.log.info("Run input checked: %d conf key(s), every parameter valid", len(conf))

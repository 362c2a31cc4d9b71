"""Tokenize, measure and judge the training data on a CPU before the training job exists."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.params import SFTParams, kubernetes_quantity
from airflow_provider_sft.core.pod.steps import prepare_config
from airflow_provider_sft.core.training.data_report import (
    REPORT_XCOM_KEY,
    DataReport,
    check_dropped,
    checked_max_dropped_fraction,
)
from airflow_provider_sft.links import TrainingResultsLink
from airflow_provider_sft.operators.failures import bad_input_is_final, data_gate_is_final
from airflow_provider_sft.operators.workspace import (
    STEP_TEMPLATE_FIELDS,
    WorkspaceStepsMixin,
    dag_run_dir_name,
)


class PrepareDataOperator(WorkspaceStepsMixin, BaseOperator):
    """Tokenize the resolved dataset with instructlab-training's data processing, on a CPU,
    before any GPU is asked for; report what it holds, and stop a run that would lose too much.

    The processed ``data.jsonl`` and a ``prepared.json`` (its fingerprint and the report) go to
    the directory the training job reads (``data_output_dir``, else ``<run>/data``). The training
    pod recomputes the fingerprint (dataset sha256, the tokenizer files, chat template,
    ``max_seq_len``, instructlab-training's version) and, when it matches, no node processes the
    data and none waits for another; otherwise node 0 processes again and says what changed.
    Only the base model's tokenizer files are read (fetched alone for a Hub model).

    :param dataset_path: the resolved dataset (``path`` XCom of the resolve task). (templated)
    :param workspace: workspace root. (templated)
    :param base_model, max_seq_len, effective_batch_size, num_epochs, data_output_dir: as the
        train task's parameters of the same names (give both the same values). (templated)
    :param max_dropped_fraction: the largest share of the samples the run may lose to
        instructlab's length filters (under 20 tokens, at or over ``max_seq_len``); default 0.02.
        Past it the task fails, naming the counts, the reasons and a ``max_seq_len`` that would
        keep 99%, and the training job is never created. (templated)
    :param hf_conn_id: a ``huggingface`` connection for a Hub base model's tokenizer. (templated)
    :param cpu, memory: the size of the step's job in ``cluster`` mode (Kubernetes quantities,
        requests = limits; default ``"4"`` and ``"16Gi"``). (templated)

    In ``cluster`` workspace mode it runs as a one-node CPU job next to the PVC, like resolve
    and export (see :class:`~airflow_provider_sft.operators.workspace.WorkspaceStepsMixin`); it
    tokenizes on every core its process may use (its CPU limit, or the worker's affinity).

    Returns (XCom) ``processed_dir``, ``fingerprint``, ``fingerprint_id`` and ``report``: samples
    in, kept, dropped by reason, a token-length histogram, tokens and loss-counted tokens, and
    the optimizer steps per epoch and in total.
    """

    template_fields: Sequence[str] = (
        "dataset_path",
        "workspace",
        "base_model",
        "max_seq_len",
        "effective_batch_size",
        "num_epochs",
        "data_output_dir",
        "max_dropped_fraction",
        "hf_conn_id",
        "cpu",
        "memory",
        *STEP_TEMPLATE_FIELDS,
    )
    ui_color = "#fef9e7"
    operator_extra_links = (TrainingResultsLink(),)  # the data report and its histogram, gate stopped or not

    def __init__(
        self,
        *,
        dataset_path: str,
        workspace: str,
        base_model: str = c.DEFAULT_BASE_MODEL,
        max_seq_len: int | str = c.DEFAULT_MAX_SEQ_LEN,  # int, or a template that renders to one
        effective_batch_size: int | str = SFTParams.model_fields["effective_batch_size"].default,
        num_epochs: int | str = SFTParams.model_fields["num_epochs"].default,
        data_output_dir: str | None = None,
        max_dropped_fraction: float | str = c.DEFAULT_MAX_DROPPED_FRACTION,
        hf_conn_id: str | None = None,
        cpu: str = "4",
        memory: str = "16Gi",
        backend: str = "local",
        workspace_mode: str | None = None,
        pvc_mount_path: str | None = None,
        kubernetes: dict[str, Any] | None = None,
        kubernetes_conn_id: str | None = "kubernetes_default",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("multiple_outputs", True)  # each result key is its own XCom too
        super().__init__(**kwargs)
        self._init_steps(backend, workspace_mode, pvc_mount_path, kubernetes, kubernetes_conn_id)
        self.dataset_path = dataset_path
        self.workspace = workspace
        self.base_model = base_model
        self.max_seq_len = max_seq_len
        self.effective_batch_size = effective_batch_size
        self.num_epochs = num_epochs
        self.data_output_dir = data_output_dir
        self.max_dropped_fraction = max_dropped_fraction
        self.hf_conn_id = hf_conn_id
        self.cpu = cpu
        self.memory = memory

    def execute(self, context: Any) -> dict[str, Any]:
        with bad_input_is_final(), data_gate_is_final():  # neither a parameter nor the data changes on retry
            return self._execute(context)

    def step_settings(self, context: Any) -> dict[str, Any]:
        """The step's config, validated by the training parameters' own rules."""
        params = SFTParams.parse(
            {
                "base_model": self.base_model or c.DEFAULT_BASE_MODEL,
                "max_seq_len": self.max_seq_len,
                "effective_batch_size": self.effective_batch_size,
                "num_epochs": self.num_epochs,
                "data_output_dir": self.data_output_dir or None,
            }
        )
        base_model = params.base_model
        if base_model.startswith(("./", "../")):  # relative to the workspace, as the train task reads it
            base_model = os.path.normpath(Path(self.step_workspace) / base_model)
        run_dir = Path(self.step_workspace) / c.RUNS_DIR / dag_run_dir_name(self, context)
        processed_dir = params.data_output_dir or str(run_dir / c.PROCESSED_DIR)
        return prepare_config(str(self.dataset_path), processed_dir, params, base_model=base_model)

    def job_resources(self) -> dict[str, str]:
        """``cpu`` and ``memory`` checked as Kubernetes quantities, naming the field."""
        errors, resources = {}, {}
        for name in ("cpu", "memory"):
            try:
                resources[name] = kubernetes_quantity(getattr(self, name))
            except ValueError as exc:
                errors[name] = str(exc)
        if errors:
            raise InvalidParameterError(errors)
        return resources

    def _execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_sft.hooks.huggingface import HuggingFaceHook

        max_dropped = checked_max_dropped_fraction(self.max_dropped_fraction)
        resources = self.job_resources()
        config = self.step_settings(context)
        token = HuggingFaceHook(self.hf_conn_id or None).get_token()
        result = self.run_step(
            context,
            "prepare",
            config,
            secret_env={c.HF_TOKEN_ENV: token} if token else None,
            resources=resources,
        )
        report = DataReport.from_dict(result["report"])
        log = self.log.warning if report.dropped_samples else self.log.info
        log("Data report (fingerprint %s): %s", result["fingerprint_id"], report.summary())
        # pushed before the gate: a run it stops still shows its histogram in the results tab
        context["ti"].xcom_push(key=REPORT_XCOM_KEY, value=result["report"])
        check_dropped(report, max_dropped)
        return result

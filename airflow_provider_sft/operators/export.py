"""Export the trained model and report on the run (each its own task, XCom-linked)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_sft.assets import MODELS_ALIAS, emit_model_event, model_alias
from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.publish import Destination, PublishOptions, parse_destination
from airflow_provider_sft.core.results.chart import write_loss_chart
from airflow_provider_sft.core.results.efficiency import Efficiency, checked_gpu_hour_cost
from airflow_provider_sft.core.results.metrics import (
    MetricsLog,
    MetricsSummary,
    StepRecord,
    ValidationRecord,
    read_metrics_log,
    summarize_log,
)
from airflow_provider_sft.core.results.model_asset import model_asset_uri, model_event_extra
from airflow_provider_sft.core.training.progress import summary_line
from airflow_provider_sft.lineage import LineageMixin
from airflow_provider_sft.links import TrainingResultsLink
from airflow_provider_sft.operators.failures import bad_input_is_final
from airflow_provider_sft.operators.workspace import STEP_TEMPLATE_FIELDS, WorkspaceStepsMixin


class ExportModelOperator(WorkspaceStepsMixin, LineageMixin, BaseOperator):
    """Publish the run's final checkpoint as ``<run>/final_model`` and write ``<run>/metrics.json``.

    Both stay inside the training run's directory, so concurrent DAG runs never replace each
    other's model; ``<workspace>/latest.json`` names the newest one (a small file replaced
    atomically, never the model itself).

    :param training_output_dir: the training run's directory (XCom of the train task). (templated)
    :param workspace: workspace root. (templated)
    :param model_dir: where to publish the model (relative: to the workspace); default
        ``<training_output_dir>/final_model``. Never a system or home directory, the workspace,
        another run's directory, the checkpoint, or an existing directory the provider did not
        create (one without ``sft_manifest.json``): see ``core/files.py``. (templated)
    :param keep_intermediate: keep the run's ``full_state/``, ``hf_format/`` checkpoints and
        processed data after the export. Default False: they are removed once the model is
        published, so each run keeps only its model, metrics and log on the disk.
    :param job_created: when the training job was created (ISO 8601), the ``job_created`` XCom of
        the train task: the time to the first step counts from it (without it: from the training
        process's start). (templated)
    :param gpu_hour_cost: the price of one GPU-hour (a number >= 0, any currency): ``metrics.json``
        then has the run's cost, GPU-hours x this. Empty: no cost. (templated)
    :param publish_to: where the model then leaves the cluster (templated):
        ``s3://bucket/prefix/`` (each run under ``<prefix>/runs/<run>/``, then ``<prefix>/latest.json``
        names it) or ``hf://org/name[@revision]`` (one commit). Empty: the model stays at
        ``model_dir``. See :mod:`airflow_provider_sft.core.publish`.
    :param aws_conn_id: an ``aws`` connection for an ``s3://`` destination (keys, region,
        ``endpoint_url`` extra for MinIO or Ceph); default boto3's chain. (templated)
    :param hf_conn_id: a ``huggingface`` connection for an ``hf://`` destination (token,
        endpoint); default ``HF_TOKEN``/``HF_ENDPOINT``. (templated)
    :param publish_private: a Hub repo the publish creates is private (default True); False is
        refused for any other destination.
    :param asset_alias: the ``AssetAlias`` this task declares as its outlet (default
        ``sft_models``; None: no asset event). After a successful export it emits, through it, an
        event of the destination's asset (``s3://bucket/prefix``, ``hf://org/name[@revision]``;
        without ``publish_to``: ``file://<workspace>/latest.json``, or ``pvc://<pvc>/latest.json``
        in ``cluster`` mode) whose ``extra`` names this run's model (``model_uri``, ``model_path``,
        ``run``) and its metrics; a DAG scheduled on the alias, or on that asset, runs next. See
        :mod:`airflow_provider_sft.assets`.

    On the ``kubernetes`` backend in ``cluster`` workspace mode the export runs in a pod that
    mounts the PVC (see :class:`~airflow_provider_sft.operators.workspace.WorkspaceStepsMixin`);
    the model and ``metrics.json`` are then on the PVC.

    Returns (XCom) ``model_path``, ``source_checkpoint``, ``metrics_path``, ``metrics`` (the
    summary), ``steps`` (the per-step loss curve the report task draws), ``resumes`` (where a
    preempted or retried run resumed: the chart marks them), ``validation`` (the validation loss
    trace, empty without a ``validation_split``), ``data_report`` (the data the run trained on:
    counts, token-length histogram, steps; also in ``metrics.json``), ``efficiency`` (tokens/s,
    MFU, GPU-hours, cost, time to the first step; also in ``metrics.json``) and ``publication``
    (None without ``publish_to``; else ``uri``, ``pointer``, ``files``, ``uploaded_bytes``,
    ``skipped_files``).
    """

    template_fields: Sequence[str] = (
        "training_output_dir",
        "workspace",
        "model_dir",
        "job_created",
        "gpu_hour_cost",
        "publish_to",
        "aws_conn_id",
        "hf_conn_id",
        *STEP_TEMPLATE_FIELDS,
    )
    ui_color = "#eafaf1"
    operator_extra_links = (TrainingResultsLink(),)

    def __init__(
        self,
        *,
        training_output_dir: str,
        workspace: str,
        model_dir: str | None = None,
        keep_intermediate: bool = False,
        job_created: str | None = None,
        gpu_hour_cost: float | str | None = None,
        publish_to: str | None = None,
        aws_conn_id: str | None = None,
        hf_conn_id: str | None = None,
        publish_private: bool = True,
        asset_alias: str | None = MODELS_ALIAS,
        backend: str = "local",
        workspace_mode: str | None = None,
        pvc_mount_path: str | None = None,
        kubernetes: dict[str, Any] | None = None,
        kubernetes_conn_id: str | None = "kubernetes_default",
        **kwargs: Any,
    ):
        kwargs.setdefault("multiple_outputs", True)  # each result key is its own XCom too
        if asset_alias:  # the alias is the outlet: the destination's URI is known only at run time
            kwargs["outlets"] = [*(kwargs.get("outlets") or []), model_alias(asset_alias)]
        super().__init__(**kwargs)
        self.asset_alias = asset_alias
        self.training_output_dir = training_output_dir
        self.workspace = workspace
        self.model_dir = model_dir
        self.keep_intermediate = keep_intermediate
        self.job_created = job_created
        self.gpu_hour_cost = gpu_hour_cost
        self.publish_to = publish_to
        self.aws_conn_id = aws_conn_id  # "" (an empty form field) means none, like None
        self.hf_conn_id = hf_conn_id
        self.publish_private = publish_private
        self._init_steps(backend, workspace_mode, pvc_mount_path, kubernetes, kubernetes_conn_id)

    def execute(self, context: Any) -> dict[str, Any]:
        with bad_input_is_final():  # a bad parameter is not retried
            return self._execute(context)

    def _execute(self, context: Any) -> dict[str, Any]:
        gpu_hour_cost = checked_gpu_hour_cost(self.gpu_hour_cost)  # before the step does any work
        destination = parse_destination(self.publish_to)
        if not self.publish_private and (destination is None or destination.scheme != "hf"):
            raise InvalidParameterError(  # a public repo asked for: never silently ignored
                {
                    "publish_private": "False applies only to an hf:// publish_to (an S3 object has no such switch)"
                },
                kind="publish",
            )
        options = self.publish_options() if destination else None
        run_dir = Path(self.training_output_dir)
        model_dir = (
            Path(self.step_workspace) / self.model_dir if self.model_dir else run_dir / c.FINAL_MODEL_DIR
        )
        config = {
            "run_dir": str(run_dir),
            "model_dir": str(model_dir),
            "metrics_path": str(run_dir / c.METRICS_SUMMARY_FILE),
            "latest_path": str(Path(self.step_workspace) / c.LATEST_FILE),
            "prune": not self.keep_intermediate,
            "job_created": self.job_created or None,
            "gpu_hour_cost": gpu_hour_cost,
            "publish_to": destination.uri if destination else None,
            "publish_settings": options.settings() if options else None,
        }
        secret_env = options.secret_env() if options else None
        result = self.run_step(context, "export", config, secret_env=secret_env)  # it logs the export
        efficiency = Efficiency.from_dict(result["efficiency"]) if result.get("efficiency") else None
        summary = summary_line(MetricsSummary(**result["metrics"]), efficiency)
        self.log.info("%s: %s", result["metrics_path"], summary)
        publication = result.get("publication")
        self.record_lineage(  # the output is the published model where there is one
            inputs=[(result["source_checkpoint"], "models")],
            outputs=[(publication["uri"] if publication else result["model_path"], "models")],
        )
        if self.asset_alias:
            self.emit_asset_event(context, destination, str(config["latest_path"]), run_dir.name, result)
        return {
            key: result[key]
            for key in ("model_path", "source_checkpoint", "metrics_path", "metrics", "steps", "data_report")
        } | {
            "resumes": result.get("resumes", []),
            "validation": result["metrics"].get("validation", []),
            "efficiency": result.get("efficiency"),
            "publication": result.get("publication"),
        }

    def emit_asset_event(
        self,
        context: Any,
        destination: Destination | None,
        latest_path: str,
        run: str,
        result: dict[str, Any],
    ) -> None:
        """The model's asset event: the destination's asset, this run's model in its ``extra``."""
        assert self.asset_alias
        pvc = {  # in cluster mode the workspace is the PVC: its paths are the pods', not this worker's
            "pvc_name": (self.kubernetes or {}).get("pvc_name") if self.in_cluster else None,
            "pvc_mount_path": self.step_workspace if self.in_cluster else None,
        }
        uri = model_asset_uri(destination.uri if destination else None, latest_path=latest_path, **pvc)
        ti = context.get("ti")
        extra = model_event_extra(
            result,
            asset_uri=uri,
            run=run,
            dag_id=getattr(ti, "dag_id", None),
            run_id=context.get("run_id"),
            connections={"aws_conn_id": self.aws_conn_id, "hf_conn_id": self.hf_conn_id}
            if destination
            else None,
            **pvc,
        )
        if emit_model_event(context, self.asset_alias, uri, extra):
            # the model's path was said once, by the export: the event names the asset and the run
            self.log.info("Asset event: %s (run %s, through the alias %s)", uri, run, self.asset_alias)

    def publish_options(self) -> PublishOptions:
        """As whom to publish, from the connections (secrets never logged or returned)."""
        from airflow_provider_sft.hooks.remote_access import remote_access

        return remote_access(
            self.aws_conn_id, self.hf_conn_id, model=PublishOptions, private=self.publish_private
        )


class LossChartOperator(BaseOperator):
    """Write the interactive loss chart (one self-contained HTML file) for a training run.

    :param training_output_dir: the training run's directory. (templated)
    :param steps: the loss curve, the ``steps`` XCom of :class:`ExportModelOperator`; without it
        the run's metrics file is read (the worker must then see the workspace). (templated)
    :param resumes: with ``steps``: the ``resumes`` XCom of :class:`ExportModelOperator`, drawn as
        vertical lines where a preempted or retried run resumed. (templated)
    :param validation: with ``steps``: the ``validation`` XCom of :class:`ExportModelOperator`, the
        validation loss drawn beside the training loss, its best step marked. (templated)
    :param efficiency: the ``efficiency`` XCom of :class:`ExportModelOperator`: the page shows the
        figures above the chart. (templated)
    :param chart_path: output HTML path, default ``<workspace>/runs/<run>/loss_chart.html``: the
        chart is drawn on the Airflow side, in this worker's ``workspace``. (templated)
    :param workspace: workspace root. (templated)

    Returns (XCom) ``chart_path``.
    """

    template_fields: Sequence[str] = (
        "training_output_dir",
        "workspace",
        "chart_path",
        "steps",
        "resumes",
        "validation",
        "efficiency",
    )
    ui_color = "#fdf2e9"
    operator_extra_links = (TrainingResultsLink(),)

    def __init__(
        self,
        *,
        training_output_dir: str,
        workspace: str,
        chart_path: str | None = None,
        steps: list[dict[str, Any]] | None = None,
        resumes: list[dict[str, Any]] | None = None,
        validation: list[dict[str, Any]] | None = None,
        efficiency: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        kwargs.setdefault("multiple_outputs", True)  # each result key is its own XCom too
        super().__init__(**kwargs)
        self.training_output_dir = training_output_dir
        self.workspace = workspace
        self.chart_path = chart_path
        self.steps = steps
        self.resumes = resumes
        self.validation = validation
        self.efficiency = efficiency

    def execute(self, context: Any) -> dict[str, Any]:
        if self.steps is not None:
            metrics = MetricsLog(
                [StepRecord(**step) for step in self.steps],
                0,
                list(self.resumes or []),
                [ValidationRecord(**record) for record in self.validation or []],
            )
        else:
            metrics = read_metrics_log(Path(self.training_output_dir) / c.METRICS_FILE)
        run = Path(self.training_output_dir).name
        target = Path(self.chart_path or Path(self.workspace) / c.RUNS_DIR / run / c.LOSS_CHART_FILE)
        chart = write_loss_chart(
            metrics.records,
            target,
            summary=summarize_log(metrics),
            title=f"SFT loss — {Path(self.training_output_dir).name}",
            efficiency=Efficiency.from_dict(self.efficiency) if self.efficiency else None,
        )
        self.log.info("Loss chart: %s", chart)
        return {"chart_path": str(chart)}

"""Export the trained model and report on the run (each its own task, XCom-linked)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.chart import write_loss_chart
from airflow_provider_sft.core.export import export_model
from airflow_provider_sft.core.metrics import read_step_records, summarize, write_summary
from airflow_provider_sft.lineage import LineageMixin
from airflow_provider_sft.links import LossChartLink


class ExportModelOperator(LineageMixin, BaseOperator):
    """Publish the run's final checkpoint as ``<workspace>/final_model`` and write ``metrics.json``.

    :param training_output_dir: the training run's directory (XCom of the train task). (templated)
    :param workspace: workspace root. (templated)
    :param model_dir: where to publish the model; default ``<workspace>/final_model``. (templated)

    Returns (XCom) ``model_path``, ``source_checkpoint``, ``metrics_path`` and ``metrics`` (the summary).
    """

    template_fields: Sequence[str] = ("training_output_dir", "workspace", "model_dir")
    ui_color = "#eafaf1"

    def __init__(
        self, *, training_output_dir: str, workspace: str, model_dir: str | None = None, **kwargs: Any
    ):
        kwargs.setdefault("multiple_outputs", True)  # each result key is its own XCom too
        super().__init__(**kwargs)
        self.training_output_dir = training_output_dir
        self.workspace = workspace
        self.model_dir = model_dir

    def execute(self, context: Any) -> dict[str, Any]:
        run_dir = Path(self.training_output_dir)
        destination = Path(self.model_dir or Path(self.workspace) / c.FINAL_MODEL_DIR)
        result = export_model(run_dir, destination)
        self.log.info(
            "Exported %s -> %s (%d files, %d bytes)",
            result.source_checkpoint,
            destination,
            result.files,
            result.bytes,
        )
        records, skipped = read_step_records(run_dir / c.METRICS_FILE)
        summary = summarize(records, skipped_lines=skipped)
        metrics_path = write_summary(summary, Path(self.workspace) / c.METRICS_SUMMARY_FILE)
        self.log.info("Metrics: %s", summary.to_dict())
        self.record_lineage(
            inputs=[(result.source_checkpoint, "models")], outputs=[(result.model_path, "models")]
        )
        return {
            "model_path": result.model_path,
            "source_checkpoint": result.source_checkpoint,
            "metrics_path": str(metrics_path),
            "metrics": summary.to_dict(),
        }


class LossChartOperator(BaseOperator):
    """Write the interactive loss chart (one self-contained HTML file) for a training run.

    :param training_output_dir: the training run's directory. (templated)
    :param chart_path: output HTML path, default ``<workspace>/loss_chart.html``. (templated)
    :param workspace: workspace root. (templated)
    :param chart_url_template: how the "Loss chart" extra link reaches the file, with a ``{path}``
        placeholder, e.g. ``https://files.example.com{path}``; default ``file://{path}``.

    Returns (XCom) ``chart_path``.
    """

    template_fields: Sequence[str] = ("training_output_dir", "workspace", "chart_path")
    ui_color = "#fdf2e9"
    operator_extra_links = (LossChartLink(),)

    def __init__(
        self,
        *,
        training_output_dir: str,
        workspace: str,
        chart_path: str | None = None,
        chart_url_template: str | None = None,
        **kwargs: Any,
    ):
        kwargs.setdefault("multiple_outputs", True)  # each result key is its own XCom too
        super().__init__(**kwargs)
        self.training_output_dir = training_output_dir
        self.workspace = workspace
        self.chart_path = chart_path
        self.chart_url_template = chart_url_template

    def execute(self, context: Any) -> dict[str, Any]:
        records, skipped = read_step_records(Path(self.training_output_dir) / c.METRICS_FILE)
        target = Path(self.chart_path or Path(self.workspace) / c.LOSS_CHART_FILE)
        chart = write_loss_chart(
            records,
            target,
            summary=summarize(records, skipped_lines=skipped),
            title=f"SFT loss — {Path(self.training_output_dir).name}",
        )
        self.log.info("Loss chart: %s", chart)
        return {"chart_path": str(chart)}

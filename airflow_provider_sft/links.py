"""Operator extra links."""

from __future__ import annotations

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom


class TrainJobConsoleLink(BaseOperatorLink):
    """The training run's TrainJob in the cluster console (``console_url_template`` of the operator)."""

    name = "TrainJob"

    def get_link(self, operator, *, ti_key) -> str:
        template = getattr(operator, "console_url_template", None)
        if not template:  # no lookup at all: a failed task has no job, and no error line for it
            return ""
        job = XCom.get_value(ti_key=ti_key, key="training_job")
        if not job or job.get("backend") != "kubernetes":
            return ""
        return template.format(namespace=job.get("namespace", ""), name=job.get("name", ""))


class LossChartLink(BaseOperatorLink):
    """The loss chart the report task wrote (``chart_url_template`` maps its path to a URL)."""

    name = "Loss chart"

    def get_link(self, operator, *, ti_key) -> str:
        path = XCom.get_value(ti_key=ti_key, key="chart_path")
        if not path:
            return ""
        template = getattr(operator, "chart_url_template", None) or "file://{path}"
        return template.format(path=path)

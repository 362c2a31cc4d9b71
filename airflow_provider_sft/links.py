"""Operator extra links: the training job in a cluster console, and the run's *Training results* tab.

Airflow 3's UI shows only http(s) and mailto links and hides empty ones: a link that has
nothing to point at returns ``""``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

from airflow_provider_sft.core.backends.base import TRAINING_JOB_XCOM_KEY, JobHandle
from airflow_provider_sft.core.training.data_report import REPORT_XCOM_KEY
from airflow_provider_sft.plugin import URL_ROUTE

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class TrainingJobConsoleLink(BaseOperatorLink):
    """The run's TrainJob or PyTorchJob in the cluster console (``console_url_template`` of the operator)."""

    name = "Training job"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        template = getattr(operator, "console_url_template", None)
        if not template:  # no lookup at all: a failed task has no job, and no error line for it
            return ""
        job = XCom.get_value(ti_key=ti_key, key=TRAINING_JOB_XCOM_KEY)
        handle = JobHandle.from_dict(job) if job else None
        if handle is None or handle.namespace is None:
            return ""  # a run on this machine is no cluster job
        return template.format(namespace=handle.namespace, name=handle.name)


def airflow_ui_url() -> str:
    """The UI's base URL: ``[api] base_url``, else the API server's host and port."""
    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback="") or ""
    if base:
        return base.rstrip("/")
    host = conf.get("api", "host", fallback="localhost") or "localhost"
    if host in ("0.0.0.0", "::"):
        host = "localhost"
    return f"http://{host}:{conf.get('api', 'port', fallback='8080')}"


def results_tab_url(ti_key: TaskInstanceKey) -> str:
    """The *Training results* tab of one task instance in the Airflow UI."""
    path = f"/dags/{quote(ti_key.dag_id, safe='')}/runs/{quote(ti_key.run_id, safe='')}/tasks/{quote(ti_key.task_id, safe='')}"
    if ti_key.map_index is not None and ti_key.map_index >= 0:
        path += f"/mapped/{ti_key.map_index}"
    return f"{airflow_ui_url()}{path}/plugin/{URL_ROUTE}"


class TrainingResultsLink(BaseOperatorLink):
    """The run's loss chart, metrics and data report, in the provider's tab of this task instance."""

    name = "Training results"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        # Not finished (or failed): nothing to show, unless a prepare task's gate stopped the run
        # after its data report was pushed.
        if all(XCom.get_value(ti_key=ti_key, key=key) is None for key in ("return_value", REPORT_XCOM_KEY)):
            return ""
        return results_tab_url(ti_key)

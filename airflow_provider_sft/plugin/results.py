"""The *Training results* page of a task instance: its run's loss chart and metrics.

Everything on the page comes from the DAG run's XComs in Airflow's metadata database, the same
values the REST API serves: the ``export_model`` result holds the metrics summary and the
per-step curve. No file is read, so no path from a request ever reaches the filesystem, and the
page works where the API server cannot see the workspace (a PVC only the pods mount).

Which training run a task instance belongs to is read from its own result: ``output_dir``
(train), or the run directory its ``metrics_path``, ``model_path`` or ``chart_path`` lies in
(export, report). Run directories are named after the run, so the name matches across the
pod's and the worker's paths.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse
from sqlalchemy import select

from airflow_provider_sft.core.results.metrics import StepRecord

PREFIX = "/sft"
_RUN_FILE_KEYS = ("metrics_path", "model_path", "chart_path")

app = FastAPI(title="SFT training results", docs_url=None, redoc_url=None, openapi_url=None)


@dataclass(frozen=True)
class Results:
    run_name: str
    metrics: dict[str, Any]
    steps: list[dict[str, Any]]
    source_task: str


def run_name_of(result: Any) -> str | None:
    """The training run a task's result refers to (the run directory's name), if any."""
    if not isinstance(result, dict):
        return None
    if isinstance(result.get("output_dir"), str):
        return PurePosixPath(result["output_dir"]).name or None
    for key in _RUN_FILE_KEYS:
        if isinstance(result.get(key), str):
            return PurePosixPath(result[key]).parent.name or None
    return None


def find_results(results: dict[str, Any], task_id: str) -> tuple[str | None, Results | None]:
    """The run of ``task_id`` and the exported metrics of that run, from one DAG run's results."""
    run = run_name_of(results.get(task_id))
    if run is None:
        return None, None
    for source, result in results.items():
        if (
            isinstance(result, dict)
            and isinstance(result.get("metrics"), dict)
            and isinstance(result.get("steps"), list)
            and run_name_of(result) == run
        ):
            return run, Results(run, result["metrics"], result["steps"], source)
    return run, None


#: A task instance's map index: -1 (not mapped) up to the int32 column's maximum.
MAP_INDEX_RANGE = range(-1, 2**31)


def _map_index(value: str) -> int:
    """The map index of the query; a number the database cannot hold is the request's fault (400).

    The UI leaves ``{MAP_INDEX}`` unfilled for a task that is not mapped: that is -1.
    """
    try:
        index = int(value)
    except ValueError:
        return -1
    if index not in MAP_INDEX_RANGE:
        raise HTTPException(
            status_code=400,
            detail=f"map_index must be an integer from -1 to {MAP_INDEX_RANGE[-1]}, got {value[:40]}",
        )
    return index


def _dag_run_results(session: Any, dag_id: str, run_id: str, map_index: int) -> dict[str, Any]:
    from airflow.models.xcom import XComModel

    rows = session.scalars(
        select(XComModel).where(
            XComModel.dag_id == dag_id,
            XComModel.run_id == run_id,
            XComModel.map_index == map_index,
            XComModel.key == "return_value",
        )
    )
    return {row.task_id: XComModel.deserialize_value(row) for row in rows}


@app.get(
    "/results/{dag_id}/{run_id}/{task_id}",
    response_class=HTMLResponse,
    dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))],
)
def results_page(
    dag_id: str, run_id: str, task_id: str, session: SessionDep, map_index: str = Query("-1")
) -> HTMLResponse:
    results = _dag_run_results(session, dag_id, run_id, _map_index(map_index))
    run, found = find_results(results, task_id)
    return HTMLResponse(render_page(task_id, run, found))


@app.get("/static/plotly.min.js")
def plotly_js() -> FileResponse:
    """plotly.js from the installed plotly package (no CDN: the page works air-gapped)."""
    from importlib.resources import files

    path = files("plotly") / "package_data" / "plotly.min.js"
    return FileResponse(str(path), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1rem; color: #1a202c; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
td, th { padding: 0.2rem 0.8rem 0.2rem 0; text-align: left; font-variant-numeric: tabular-nums; }
th { font-weight: 600; color: #4a5568; }
.note { color: #4a5568; }
"""

_METRIC_ROWS = (
    ("final_loss_smoothed", "Final loss (smoothed)", ".4f"),
    ("final_loss", "Final loss (last step)", ".4f"),
    ("min_loss", "Lowest loss", ".4f"),
    ("perplexity", "Perplexity (last step)", ".2f"),
    ("steps", "Steps", "d"),
    ("epochs", "Epochs", "d"),
    ("samples_seen", "Samples", "d"),
    ("total_tokens", "Tokens", "d"),
    ("avg_throughput_samples_per_second", "Samples per second", ".2f"),
    ("runtime_seconds", "Training time (s)", ".0f"),
)


def _cell(value: Any, spec: str) -> str:
    if value is None:
        return "n/a"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return html.escape(str(value))


def render_page(task_id: str, run: str | None, results: Results | None) -> str:
    """The HTML page: a metrics table and the interactive chart, or why there is none."""
    if results is None:
        note = (
            f"Task {task_id!r} has no SFT training run."
            if run is None
            else f"Training run {run!r} has no exported metrics yet: the export task of this DAG run writes them."
        )
        body = f'<p class="note">{html.escape(note)}</p>'
    else:
        from airflow_provider_sft.core.results.chart import NO_DATA_MESSAGE, build_figure, has_loss_data

        records = [StepRecord(**step) for step in results.steps]
        metrics = results.metrics  # the export's summary: computed once, where the run was read
        rows = "".join(
            f"<tr><th>{label}</th><td>{_cell(metrics.get(key), spec)}</td></tr>"
            for key, label, spec in _METRIC_ROWS
        )
        if has_loss_data(records):
            figure = build_figure(records, title=f"Training loss — {html.escape(results.run_name)}")
            chart = figure.to_html(
                full_html=False,
                include_plotlyjs=False,
                div_id="sft-loss-chart",
                config={"displaylogo": False, "responsive": True},
            )
        else:  # an empty set of axes reads as a broken page
            chart = f'<p class="note" id="sft-no-data">{html.escape(NO_DATA_MESSAGE)}</p>'
        body = (
            f"<h2>Training run {html.escape(results.run_name)}</h2>"
            f'<table id="sft-metrics">{rows}</table>{chart}'
            f'<p class="note">From the XComs of task {html.escape(results.source_task)!s}.</p>'
            f'<script type="application/json" id="sft-metrics-json">{html.escape(json.dumps(metrics))}</script>'
        )
    # Relative to /sft/results/<dag>/<run>/<task>: the page works behind a proxy's base path.
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>Training results</title>'
        f'<style>{_STYLE}</style><script src="../../../static/plotly.min.js"></script></head>'
        f"<body>{body}</body></html>"
    )

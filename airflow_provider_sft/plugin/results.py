"""The *Training results* page of a task instance: its run's loss chart, metrics and data report.

Everything on the page comes from the DAG run's XComs in Airflow's metadata database, the same
values the REST API serves: the ``export_model`` result holds the metrics summary and the
per-step curve. No file is read, so no path from a request ever reaches the filesystem, and the
page works where the API server cannot see the workspace (a PVC only the pods mount).

Which training run a task instance belongs to is read from its own result: ``output_dir``
(train), or the run directory its ``metrics_path``, ``model_path`` or ``chart_path`` lies in
(export, report), or ``<run>/data`` (the prepare task's ``processed_dir``). Run directories
are named after the run, so the name matches across the pod's and the worker's paths.

While the training runs, before any export, the page shows its progress and its loss curve so
far from the train task's ``training_progress`` XCom, which the waiter (the worker's, or the
trigger's through the triggerer) stores about every 5%: the API server needs no cluster
credentials and no workspace for it (DESIGN.md, "A running job is visible"). The page reloads
itself while the task has not finished.

The *Data* section shows the report of the data the run trained on (the export's
``data_report``), else the prepare task's ``report`` XCom, which that task pushes before its
gate: a run the gate stopped still shows why. Only counts and lengths, never a sample.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, fields
from pathlib import PurePosixPath
from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse
from sqlalchemy import select

from airflow_provider_sft.core.results.live_progress import (
    PROGRESS_XCOM_KEY,
    CurvePoint,
    Progress,
    duration_text,
    progress_of_payload,
)
from airflow_provider_sft.core.results.metrics import StepRecord, ValidationRecord
from airflow_provider_sft.core.training.data_report import REPORT_XCOM_KEY, DataReport

PREFIX = "/sft"
_RUN_FILE_KEYS = ("metrics_path", "model_path", "chart_path")
#: The prepare task's ``processed_dir`` in its run's directory (unless ``data_output_dir`` is set).
_RUN_DATA_DIR = "data"

app = FastAPI(title="SFT training results", docs_url=None, redoc_url=None, openapi_url=None)


@dataclass(frozen=True)
class Results:
    run_name: str
    metrics: dict[str, Any]
    steps: list[dict[str, Any]]
    source_task: str


@dataclass(frozen=True)
class DataSection:
    report: DataReport
    source_task: str
    trained_on: bool = False  # the export's: the data the run trained on, not a prepare task's
    stopped: bool = False  # the prepare task's gate stopped the run: a report, and no result


def run_name_of(result: Any) -> str | None:
    """The training run a task's result refers to (the run directory's name), if any."""
    if not isinstance(result, dict):
        return None
    if isinstance(result.get("output_dir"), str):
        return PurePosixPath(result["output_dir"]).name or None
    for key in _RUN_FILE_KEYS:
        if isinstance(result.get(key), str):
            return PurePosixPath(result[key]).parent.name or None
    if isinstance(result.get("processed_dir"), str):  # a data_output_dir elsewhere names no run
        processed = PurePosixPath(result["processed_dir"])
        if processed.name == _RUN_DATA_DIR:
            return processed.parent.name or None
        return None
    return None


def data_report_of(value: Any) -> DataReport | None:
    """A data report from an XCom value; anything else (an older or foreign value) is no report."""
    if not isinstance(value, dict):
        return None
    try:
        report = DataReport.from_dict(value)
    except (KeyError, TypeError, ValueError):
        return None
    histogram = report.histogram
    if not isinstance(report.percentiles, dict) or not isinstance(report.processed_path, str):
        return None
    numbers = [getattr(report, f.name) for f in fields(report) if f.type == "int"]
    numbers += [*histogram.edges, *histogram.counts, *report.percentiles.values()]
    if len(histogram.edges) != len(histogram.counts) + 1 or not all(_is_count(n) for n in numbers):
        return None
    return report


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _prepared_reports(reports: dict[str, Any]) -> dict[str, DataReport]:
    return {task: report for task, value in reports.items() if (report := data_report_of(value))}


def _run_of_report(report: DataReport) -> str | None:
    """The run whose ``<run>/data`` holds the processed data (``processed_path`` is a file in it)."""
    return run_name_of({"processed_dir": str(PurePosixPath(report.processed_path).parent)})


def _only_run(results: dict[str, Any]) -> str | None:
    """The DAG run's training run when it has exactly one."""
    runs = {run_name_of(result) for result in results.values()} - {None}
    return runs.pop() if len(runs) == 1 else None


def run_of_task(results: dict[str, Any], reports: dict[str, Any], task_id: str) -> str | None:
    """The training run of ``task_id``: from its result, or, for a prepare task (even one its gate
    stopped), from where it put the data; data put elsewhere belongs to the DAG run's only run."""
    run = run_name_of(results.get(task_id))
    report = _prepared_reports(reports).get(task_id)
    if run is None and report is not None:
        run = _run_of_report(report) or _only_run(results)
    return run


def find_results(
    results: dict[str, Any], task_id: str, reports: dict[str, Any] | None = None
) -> tuple[str | None, Results | None]:
    """The run of ``task_id`` and the exported metrics of that run, from one DAG run's results
    (``reports``: its ``report`` XComs, by task)."""
    run = run_of_task(results, reports or {}, task_id)
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


def find_data(
    results: dict[str, Any], reports: dict[str, Any], task_id: str, run: str | None, found: Results | None
) -> DataSection | None:
    """The data report to show with ``task_id``: the data its run trained on (the export's), else
    the task's own (a prepare task), else the prepare task's of the same run. A prepare task that
    wrote to a ``data_output_dir`` outside the run is the run's when it is the DAG run's only one."""
    if found is not None and (exported := data_report_of(results[found.source_task].get("data_report"))):
        return DataSection(exported, found.source_task, trained_on=True)
    prepared = _prepared_reports(reports)
    if task_id in prepared:
        chosen = [task_id]
    elif run is None:
        return None
    else:
        by_run = {task: _run_of_report(report) for task, report in prepared.items()}
        chosen = [task for task, of in by_run.items() if of == run]
        if not chosen and len(by_run) == 1 and None in by_run.values():
            chosen = list(by_run)
    if len(chosen) != 1:
        return None
    (task,) = chosen
    return DataSection(prepared[task], task, stopped=results.get(task) is None)


@dataclass(frozen=True)
class LiveProgress:
    """A running training's progress, as its waiter last stored it."""

    run_name: str
    progress: Progress
    curve: list[CurvePoint]
    updated: str
    source_task: str


def find_progress(progress: dict[str, Any], task_id: str, run: str | None) -> LiveProgress | None:
    """The progress of ``task_id`` (a train task's own), else of its run (``progress``: the DAG
    run's ``training_progress`` XComs, by task)."""
    chosen = [task_id] if task_id in progress else sorted(progress)
    for task in chosen:
        parsed = progress_of_payload(progress[task])
        run_name = progress[task].get("run_name") if parsed is not None else None
        if parsed is not None and isinstance(run_name, str) and (task == task_id or run_name == run):
            return LiveProgress(run_name, *parsed, source_task=task)
    return None


#: The states of a task instance that has not finished: its page reloads itself to follow it.
UNFINISHED_STATES = (
    "scheduled",
    "queued",
    "running",
    "deferred",
    "up_for_retry",
    "up_for_reschedule",
    "restarting",
)
REFRESH_SECONDS = 15


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


def _dag_run_xcoms(session: Any, dag_id: str, run_id: str, map_index: int) -> dict[str, dict[str, Any]]:
    """The DAG run's results, its prepare tasks' data reports and its train tasks' progress: by
    key, then by task."""
    from airflow.models.xcom import XComModel

    keys = ("return_value", REPORT_XCOM_KEY, PROGRESS_XCOM_KEY)
    rows = session.scalars(
        select(XComModel).where(
            XComModel.dag_id == dag_id,
            XComModel.run_id == run_id,
            XComModel.map_index == map_index,
            XComModel.key.in_(keys),
        )
    )
    by_key: dict[str, dict[str, Any]] = {key: {} for key in keys}
    for row in rows:
        by_key[row.key][row.task_id] = XComModel.deserialize_value(row)
    return by_key


def _dag_run_results(
    session: Any, dag_id: str, run_id: str, map_index: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The DAG run's results and its prepare tasks' data reports, each by task."""
    by_key = _dag_run_xcoms(session, dag_id, run_id, map_index)
    return by_key["return_value"], by_key[REPORT_XCOM_KEY]


def _unfinished(session: Any, dag_id: str, run_id: str, task_id: str, map_index: int) -> bool:
    from airflow.models.taskinstance import TaskInstance

    state = session.scalar(
        select(TaskInstance.state).where(
            TaskInstance.dag_id == dag_id,
            TaskInstance.run_id == run_id,
            TaskInstance.task_id == task_id,
            TaskInstance.map_index == map_index,
        )
    )
    return state is not None and str(getattr(state, "value", state)) in UNFINISHED_STATES


@app.get(
    "/results/{dag_id}/{run_id}/{task_id}",
    response_class=HTMLResponse,
    dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE))],
)
def results_page(
    dag_id: str, run_id: str, task_id: str, session: SessionDep, map_index: str = Query("-1")
) -> HTMLResponse:
    index = _map_index(map_index)
    xcoms = _dag_run_xcoms(session, dag_id, run_id, index)
    results, reports = xcoms["return_value"], xcoms[REPORT_XCOM_KEY]
    run, found = find_results(results, task_id, reports)
    data = find_data(results, reports, task_id, run, found)
    live = None if found is not None else find_progress(xcoms[PROGRESS_XCOM_KEY], task_id, run)
    refresh = found is None and _unfinished(session, dag_id, run_id, task_id, index)
    return HTMLResponse(render_page(task_id, run, found, data, live=live, refresh=refresh))


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
#: Shown for a run with a validation split only: "n/a" rows would read as a failed validation.
_VALIDATION_ROWS = (
    ("validation_loss", "Validation loss (latest)", ".4f"),
    ("best_validation_loss", "Best validation loss", ".4f"),
    ("best_validation_step", "Best validation step", "d"),
)


def _cell(value: Any, spec: str) -> str:
    if value is None:
        return "n/a"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return html.escape(str(value))


def _chart_html(figure: Any, div_id: str) -> str:
    return str(
        figure.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=div_id,
            config={"displaylogo": False, "responsive": True},
        )
    )


def _training_section(results: Results) -> str:
    from airflow_provider_sft.core.results.chart import (
        NO_DATA_MESSAGE,
        build_figure,
        has_loss_data,
        resume_label,
    )

    records = [StepRecord(**step) for step in results.steps]
    metrics = results.metrics  # the export's summary: computed once, where the run was read
    resumes = [mark for mark in metrics.get("resumes") or [] if isinstance(mark, dict) and "step" in mark]
    rows = "".join(
        f"<tr><th>{label}</th><td>{_cell(metrics.get(key), spec)}</td></tr>"
        for key, label, spec in _METRIC_ROWS + (_VALIDATION_ROWS if metrics.get("validation") else ())
    )
    if resumes:  # a preempted or retried run that continued from its saved state
        listed = "<br>".join(html.escape(resume_label(mark)) for mark in resumes)
        rows += f'<tr id="sft-resumes"><th>Resumed</th><td>{listed}</td></tr>'
    if has_loss_data(records):
        title = f"Training loss — {html.escape(results.run_name)}"
        validation = [ValidationRecord(**record) for record in metrics.get("validation") or []]
        figure = build_figure(records, title=title, resumes=resumes, validation=validation)
        chart = _chart_html(figure, "sft-loss-chart")
    else:  # an empty set of axes reads as a broken page
        chart = f'<p class="note" id="sft-no-data">{html.escape(NO_DATA_MESSAGE)}</p>'
    return (
        f"<h2>Training run {html.escape(results.run_name)}</h2>"
        f'<table id="sft-metrics">{rows}</table>{chart}'
        f'<p class="note">From the XComs of task {html.escape(results.source_task)!s}.</p>'
        f'<script type="application/json" id="sft-metrics-json">{html.escape(json.dumps(metrics))}</script>'
    )


def _data_rows(report: DataReport) -> list[tuple[str, Any, str]]:
    """The report's figures as (label, value, format): counts, tokens, steps; no sample content."""
    percentiles = report.percentiles
    lengths = " / ".join(
        _cell(value, "d")
        for value in (
            percentiles.get("p50"),
            percentiles.get("p90"),
            percentiles.get("p99"),
            report.max_sample_tokens,
        )
    )
    rows: list[tuple[str, Any, str]] = [
        ("Samples in", report.input_samples, "d"),
        ("Kept", report.kept_samples, "d"),
        (f"Dropped: under {report.min_seq_len} tokens", report.dropped_too_short, "d"),
        (f"Dropped: at or over max_seq_len ({report.max_seq_len})", report.dropped_too_long, "d"),
        ("Tokens (kept samples)", report.total_tokens, "d"),
        ("Tokens counted by the loss", report.label_tokens, "d"),
        ("Tokens per sample: p50 / p90 / p99 / longest", lengths, "s"),
        (f"Optimizer steps per epoch (batch {report.effective_batch_size})", report.steps_per_epoch, "d"),
        (f"Optimizer steps in total ({report.num_epochs} epochs)", report.total_steps, "d"),
    ]
    if report.dropped_samples:
        rows.append(("Suggested max_seq_len (keeps 99%)", report.suggested_max_seq_len, "d"))
    return rows


def _data_section(data: DataSection) -> str:
    from airflow_provider_sft.core.results.data_chart import build_data_figure

    report = data.report
    rows = "".join(
        f"<tr><th>{html.escape(label)}</th><td>{html.escape(value) if spec == 's' else _cell(value, spec)}</td></tr>"
        for label, value, spec in _data_rows(report)
    )
    chart = _chart_html(build_data_figure(report), "sft-data-chart") if report.histogram.counts else ""
    source = "the data the run trained on" if data.trained_on else "prepared before training"
    return (
        f'<h2 id="sft-data">Data</h2><table id="sft-data-report">{rows}</table>{chart}'
        f'<p class="note">From the data report of task {html.escape(data.source_task)} ({source}).</p>'
    )


def _progress_section(live: LiveProgress, refresh: bool) -> str:
    """The running training's figures and its loss curve so far: numbers from the stored progress only."""
    from airflow_provider_sft.core.results.chart import build_figure

    progress = live.progress
    percent = progress.percent
    step = (
        "n/a"
        if progress.step is None
        else f"{progress.step}" + (f" of {progress.total_steps}" if progress.total_steps else "")
    )
    speed = (
        f"{progress.tokens_per_second:.0f} tokens/s"
        if progress.tokens_per_second is not None
        else _cell(progress.samples_per_second, ".1f") + " samples/s"
    )
    rows = [
        ("Progress", "n/a" if percent is None else f"{percent}%"),
        ("Step", step),
        ("Epoch", "n/a" if progress.epoch is None else f"{progress.epoch} of {progress.num_epochs or '?'}"),
        ("Loss (last reading)", _cell(progress.loss, ".4f")),
        ("Speed", speed),
        (
            "Time left (estimate)",
            "n/a" if progress.eta_seconds is None else duration_text(progress.eta_seconds),
        ),
        ("Read from", progress.source),
        ("Updated", live.updated or "n/a"),
    ]
    table = "".join(f"<tr><th>{label}</th><td>{html.escape(value)}</td></tr>" for label, value in rows)
    bar = (
        f'<progress id="sft-progress-bar" max="100" value="{percent}">{percent}%</progress>'
        if percent is not None
        else ""
    )
    records = [StepRecord(s, None, loss, lr, None, None, None, None) for s, loss, lr in live.curve]
    title = f"Training loss so far — {html.escape(live.run_name)}"
    chart = _chart_html(build_figure(records, title=title), "sft-live-chart") if len(records) > 1 else ""
    note = (
        f"The run is training: this page reloads every {REFRESH_SECONDS}s. The export task writes the final metrics."
        if refresh
        else "The task is no longer running; the export task of this DAG run writes the final metrics."
    )
    return (
        f'<h2 id="sft-live">Training run {html.escape(live.run_name)}: in progress</h2>{bar}'
        f'<table id="sft-progress">{table}</table>{chart}'
        f'<p class="note">{html.escape(note)} From the progress stored by task {html.escape(live.source_task)}.</p>'
    )


def render_page(
    task_id: str,
    run: str | None,
    results: Results | None,
    data: DataSection | None = None,
    *,
    live: LiveProgress | None = None,
    refresh: bool = False,
) -> str:
    """The HTML page: metrics and the loss chart, the data report and its histogram, or why there is none;
    a running training's progress and curve so far (``live``), reloading itself (``refresh``)."""
    if results is not None:
        body = _training_section(results)
    elif live is not None:
        body = _progress_section(live, refresh)
    elif data is not None and data.stopped:
        report = data.report
        note = (
            f"Training did not run: task {data.source_task!r} stopped the run before any training job "
            f"existed, because {report.dropped_samples} of {report.input_samples} samples would be dropped. "
            "Its log says what would keep them."
        )
        body = f'<p class="note" id="sft-not-trained">{html.escape(note)}</p>'
    elif data is None and run is None:
        body = f'<p class="note">{html.escape(f"Task {task_id!r} has no SFT training run.")}</p>'
    else:
        of = f"Training run {run!r}" if run is not None else "The training run of this data"
        note = f"{of} has no exported metrics yet: the export task of this DAG run writes them."
        body = f'<p class="note">{html.escape(note)}</p>'
    if data is not None:
        body += _data_section(data)
    # Relative to /sft/results/<dag>/<run>/<task>: the page works behind a proxy's base path.
    reload = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return (
        f'<!doctype html><html><head><meta charset="utf-8">{reload}<title>Training results</title>'
        f'<style>{_STYLE}</style><script src="../../../static/plotly.min.js"></script></head>'
        f"<body>{body}</body></html>"
    )

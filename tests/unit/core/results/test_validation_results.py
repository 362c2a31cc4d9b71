"""Validation lines in the results: metrics.json, the chart, the summary line, the results page.

The lines are written as instructlab 0.16.2 writes them (``metric_logger.info({"val_loss", "val_num_tokens"},
extra={"step": global_step})`` through its async JSONL logger, which adds ``timestamp``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.results.chart import write_loss_chart
from airflow_provider_sft.core.results.metrics import (
    MetricsSummary,
    ValidationRecord,
    read_metrics_log,
    summarize_file,
    summarize_log,
    write_summary,
)
from airflow_provider_sft.core.training.progress import summary_line
from tests.unit.core.results.test_chart import plotly_data, trace_values
from tests.unit.core.results.test_metrics import HPARAMS, step, write_lines


def val(n: int, loss: float | str, tokens: int = 496) -> dict | str:
    if isinstance(loss, str):  # NaN as Python's json writes it
        return f'{{"val_loss": {loss}, "val_num_tokens": {tokens}, "step": {n}, "timestamp": "2026-01-01T00:01:{n:02d}"}}'
    return {"val_loss": loss, "val_num_tokens": tokens, "step": n, "timestamp": f"2026-01-01T00:01:{n:02d}"}


def run_with_validation(path: Path) -> Path:
    lines: list = [HPARAMS]
    for n in range(1, 13):
        lines.append(step(n, 4.0 - 0.1 * n))
        if n % 4 == 0:
            lines.append(val(n, {4: 2.0, 8: 1.5, 12: 1.7}[n]))
    return write_lines(path, lines)


def test_validation_lines_become_the_latest_the_best_with_its_step_and_the_trace(tmp_path):
    summary = summarize_file(run_with_validation(tmp_path / c.METRICS_FILE))
    assert (summary.validation_loss, summary.validation_step) == (1.7, 12)
    assert (summary.best_validation_loss, summary.best_validation_step) == (1.5, 8)  # not the last one
    assert summary.validation == [
        {"step": 4, "val_loss": 2.0, "val_num_tokens": 496},
        {"step": 8, "val_loss": 1.5, "val_num_tokens": 496},
        {"step": 12, "val_loss": 1.7, "val_num_tokens": 496},
    ]
    assert (summary.steps, summary.final_loss) == (12, pytest.approx(2.8))  # training steps untouched
    written = json.loads(write_summary(summary, tmp_path / "metrics.json").read_text())
    assert written["best_validation_step"] == 8 and written["validation"][1]["val_loss"] == 1.5


def test_a_run_without_validation_has_none_and_an_empty_trace(tmp_path):
    summary = summarize_file(write_lines(tmp_path / "m.jsonl", [HPARAMS, step(1, 3.0), step(2, 2.0)]))
    assert (
        summary.validation == [] and summary.validation_loss is None and summary.best_validation_step is None
    )
    assert "validation" not in summary_line(summary)


def test_a_non_finite_validation_loss_is_a_gap_never_the_best_and_metrics_json_stays_strict(tmp_path):
    path = write_lines(
        tmp_path / "m.jsonl", [HPARAMS, step(1, 3.0), val(1, 2.5), step(2, 2.0), val(2, "NaN")]
    )
    summary = summarize_file(path)
    assert summary.validation == [
        {"step": 1, "val_loss": 2.5, "val_num_tokens": 496},
        {"step": 2, "val_loss": None, "val_num_tokens": 496},
    ]
    assert (summary.validation_loss, summary.best_validation_loss, summary.best_validation_step) == (
        None,
        2.5,
        1,
    )
    assert "NaN" not in write_summary(summary, tmp_path / "metrics.json").read_text()


def test_a_resumed_run_keeps_the_validations_of_the_steps_it_kept(tmp_path):
    """The attempt the resume abandoned validated step 8 after its state (step 6): dropped; the
    resumed attempt's lines (step 8 again, with the weights it trained) are the run's."""
    marker = {"resumed": True, "step": 6, "samples_seen": 24, "epoch": 0, "state": "epoch_0", "attempt": "a2"}
    first = [step(1, 3.0), val(2, 2.9), step(2, 2.8), step(3, 2.7), val(4, 2.6), step(4, 2.6)]
    first += [step(n, 2.5) for n in range(5, 9)] + [val(8, 9.9)]  # ran past the state, then killed
    second = [step(n, 2.0) for n in range(7, 10)] + [val(9, 1.9)]  # the end of the resumed run
    metrics = read_metrics_log(write_lines(tmp_path / "m.jsonl", [HPARAMS, *first, marker, *second]))
    assert [(v.step, v.val_loss) for v in metrics.validation] == [(2, 2.9), (4, 2.6), (9, 1.9)]
    summary = summarize_log(metrics)
    assert (summary.best_validation_loss, summary.best_validation_step) == (1.9, 9)
    assert summary.resumes[0]["step"] == 6 and summary.steps == 9


def test_the_summary_line_gives_the_final_and_the_best_validation_loss(tmp_path):
    line = summary_line(summarize_file(run_with_validation(tmp_path / "m.jsonl")))
    assert line.endswith(", validation loss 1.7000 at step 12 (best 1.5000 at step 8)")


def test_the_chart_draws_validation_beside_training_loss_with_the_best_step_starred(tmp_path):
    metrics = read_metrics_log(run_with_validation(tmp_path / "m.jsonl"))
    html = write_loss_chart(
        metrics.records, tmp_path / "chart.html", summary=summarize_log(metrics)
    ).read_text()
    traces = {trace["name"]: trace for trace in plotly_data(html)}
    validation = traces["validation loss"]
    assert trace_values(validation["x"]) == [4, 8, 12] and trace_values(validation["y"]) == [2.0, 1.5, 1.7]
    assert validation.get("yaxis", "y") == traces["loss"].get("yaxis", "y")  # the loss axis, not the lr one
    best = traces["best validation loss 1.5000 (step 8)"]
    assert (trace_values(best["x"]), trace_values(best["y"]), best["marker"]["symbol"]) == (
        [8],
        [1.5],
        "star",
    )
    assert "validation loss 1.7000 (best 1.5000 at step 8)" in html  # the subtitle


def test_a_chart_without_validation_has_no_validation_trace(tmp_path):
    metrics = read_metrics_log(write_lines(tmp_path / "m.jsonl", [HPARAMS, step(1, 3.0), step(2, 2.0)]))
    html = write_loss_chart(
        metrics.records, tmp_path / "chart.html", summary=summarize_log(metrics)
    ).read_text()
    assert [trace["name"] for trace in plotly_data(html)] == [
        "loss",
        "loss (smoothed, EMA 0.9)",
        "learning rate",
    ]


def test_the_chart_task_draws_the_validation_the_export_handed_it(tmp_path):
    """The report task draws from the export's XComs (the worker may not see the workspace)."""
    from airflow_provider_sft.operators.export import LossChartOperator

    metrics = read_metrics_log(run_with_validation(tmp_path / c.METRICS_FILE))
    summary = summarize_log(metrics)
    op = LossChartOperator(
        task_id="report",
        training_output_dir=str(tmp_path / "runs" / "r1"),
        workspace=str(tmp_path),
        steps=[asdict(r) for r in metrics.records],
        resumes=[],
        validation=json.loads(json.dumps(summary.to_dict()))["validation"],  # through XCom's JSON
    )
    html = Path(op.execute({})["chart_path"]).read_text()
    assert "best validation loss 1.5000 (step 8)" in {t["name"] for t in plotly_data(html)}
    assert "validation" in op.template_fields


def test_the_results_page_shows_the_validation_rows_and_trace_only_with_validation(tmp_path):
    from airflow_provider_sft.plugin.results import find_results, render_page

    metrics = read_metrics_log(run_with_validation(tmp_path / "m.jsonl"))
    summary = summarize_log(metrics).to_dict()
    export = {
        "metrics_path": "/w/runs/r1/metrics.json",
        "metrics": summary,
        "steps": [asdict(r) for r in metrics.records],
    }
    page = render_page("export_model", *find_results({"export_model": export}, "export_model"))
    assert "Best validation loss" in page and "Best validation step" in page
    assert '"name":"validation loss"' in page and "best validation loss 1.5000 (step 8)" in page
    without = {**export, "metrics": {**summary, "validation": []}}
    page = render_page("export_model", *find_results({"export_model": without}, "export_model"))
    assert "validation loss" not in page.lower()


def test_a_summary_round_trips_through_its_dict_as_the_export_operator_rebuilds_it(tmp_path):
    summary = summarize_file(run_with_validation(tmp_path / "m.jsonl"))
    again = MetricsSummary(**json.loads(json.dumps(summary.to_dict())))
    assert summary_line(again) == summary_line(summary)
    assert [ValidationRecord(**v) for v in again.validation][1] == ValidationRecord(8, 1.5, 496)

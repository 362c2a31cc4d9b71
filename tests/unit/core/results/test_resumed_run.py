"""A run that resumed (preemption, task retry) is one run: one summary with its ``resumes``, one
curve with the resume marked; and its full state survives until the export has published it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.results.chart import build_figure, resume_label, write_loss_chart
from airflow_provider_sft.core.results.metrics import (
    read_metrics_log,
    read_step_records,
    summarize_file,
    write_summary,
)
from tests.unit.core.results.test_export import write_checkpoint
from tests.unit.core.results.test_metrics import HPARAMS, step, write_lines

MARKER = {"resumed": True, "step": 5, "samples_seen": 20, "epoch": 1, "state": "epoch_1", "attempt": "a2"}


def resumed_steps(n, loss):
    """A step of the second stretch: logged ten minutes after the first stretch ended."""
    return step(n, loss, timestamp=f"2026-01-01T00:10:{n:02d}")


def write_resumed(path):
    first = [step(n, 3.0 - 0.1 * n) for n in range(1, 6)]
    torn = '{"epoch": 0, "step": 6, "avg_lo'  # the preempted writer was killed mid-line
    second = [resumed_steps(n, 3.0 - 0.1 * n) for n in range(6, 9)]
    return write_lines(path, [HPARAMS, *first, torn, MARKER, *second])


def test_a_resumed_run_is_one_run_with_its_resumes(tmp_path):
    path = write_resumed(tmp_path / c.METRICS_FILE)
    metrics = read_metrics_log(path)
    assert [r.step for r in metrics.records] == list(range(1, 9))  # the marker is not a step
    assert metrics.resumes == [
        {key: MARKER[key] for key in ("step", "samples_seen", "epoch", "state", "attempt")}
    ]
    assert read_step_records(path) == (metrics.records, 1)  # the older reader: the same steps
    summary = summarize_file(path)
    assert (summary.steps, summary.samples_seen, summary.skipped_lines) == (8, 32, 1)
    assert summary.resumes == metrics.resumes
    # 00:00:01 -> 00:00:05 and 00:10:06 -> 00:10:08: the ten minutes it waited are not training time
    assert summary.runtime_seconds == 4 + 2
    written = json.loads(write_summary(summary, tmp_path / "metrics.json").read_text())
    assert written["resumes"] == metrics.resumes and written["steps"] == 8


def test_a_run_that_never_resumed_has_an_empty_list_and_its_whole_span(tmp_path):
    summary = summarize_file(write_lines(tmp_path / "m.jsonl", [HPARAMS, step(1, 3.0), step(3, 2.0)]))
    assert summary.resumes == [] and summary.runtime_seconds == 2


@pytest.mark.parametrize(
    "line",
    [
        {"resumed": False, "step": 3},
        {"resumed": True},
        {"resumed": True, "step": "x"},
        {"resumed": "yes", "step": 3},
    ],
)
def test_lines_that_are_not_resume_markers_are_not_taken_for_one(tmp_path, line):
    assert (
        read_metrics_log(write_lines(tmp_path / "m.jsonl", [step(1, 3.0), line, step(2, 2.0)])).resumes == []
    )


def test_the_chart_is_one_curve_with_the_resume_marked_and_labelled(tmp_path):
    path = write_resumed(tmp_path / c.METRICS_FILE)
    metrics = read_metrics_log(path)
    figure = build_figure(metrics.records, resumes=metrics.resumes)
    (raw,) = [trace for trace in figure.data if trace.name == "loss"]
    assert list(raw.x) == list(range(1, 9))  # one curve through the resume
    (line,) = figure.layout.shapes
    assert (line.x0, line.x1, line.line.dash) == (5, 5, "dash")
    (label,) = figure.layout.annotations
    assert label.text == "resumed after step 5 from epoch_1 (samples 20, attempt a2)" == resume_label(MARKER)
    chart = write_loss_chart(metrics.records, tmp_path / "chart.html", summary=summarize_file(path))
    page = chart.read_text()
    assert "resumed after step 5 from epoch_1" in page and "resumed 1x" in page


def test_the_chart_task_draws_the_resumes_the_export_handed_it(tmp_path):
    from dataclasses import asdict

    from airflow_provider_sft.operators.export import LossChartOperator

    metrics = read_metrics_log(write_resumed(tmp_path / c.METRICS_FILE))
    op = LossChartOperator(
        task_id="report",
        training_output_dir=str(tmp_path / "runs" / "r1"),
        workspace=str(tmp_path),
        steps=[asdict(r) for r in metrics.records],
        resumes=metrics.resumes,
    )
    chart = op.execute({})["chart_path"]
    assert "resumed after step 5 from epoch_1" in Path(chart).read_text()


def _export_config(run, tmp_path, **extra):
    return {
        "run_dir": str(run),
        "model_dir": str(run / c.FINAL_MODEL_DIR),
        "metrics_path": str(run / c.METRICS_SUMMARY_FILE),
        "latest_path": str(tmp_path / c.LATEST_FILE),
        "prune": True,
        **extra,
    }


def _resumable_run(tmp_path):
    run = tmp_path / "runs" / "r1"
    write_checkpoint(run / c.HF_FORMAT_DIR / "samples_32")
    (run / c.FULL_STATE_DIR / "epoch_1").mkdir(parents=True)
    (run / c.FULL_STATE_DIR / "epoch_1" / "optimizer.bin").write_bytes(b"state")
    write_resumed(run / c.METRICS_FILE)
    return run


def test_the_export_step_hands_the_resumes_on_and_prunes_the_full_state_once_published(tmp_path):
    from airflow_provider_sft.core.pod.steps import export

    run = _resumable_run(tmp_path)
    result = export(_export_config(run, tmp_path), log=lambda _line: None)
    assert result["resumes"] == result["metrics"]["resumes"] == read_metrics_log(run / c.METRICS_FILE).resumes
    assert json.loads((tmp_path / c.LATEST_FILE).read_text())["model_path"] == result["model_path"]
    assert not (run / c.FULL_STATE_DIR).exists()  # published: the existing rule applies


def test_the_newest_full_state_survives_an_export_that_fails_before_the_model_is_published(tmp_path):
    """The latest.json pointer cannot be written: the export is not done, the run stays resumable."""
    from airflow_provider_sft.core.pod.steps import export

    run = _resumable_run(tmp_path)
    (tmp_path / c.LATEST_FILE).mkdir()  # a directory where the pointer goes: the write fails
    with pytest.raises(OSError):
        export(_export_config(run, tmp_path), log=lambda _line: None)
    assert (run / c.FULL_STATE_DIR / "epoch_1" / "optimizer.bin").read_bytes() == b"state"
    assert (run / c.HF_FORMAT_DIR / "samples_32").is_dir()


def test_keep_intermediate_keeps_the_full_state_after_the_export(tmp_path):
    from airflow_provider_sft.core.pod.steps import export

    run = _resumable_run(tmp_path)
    export(_export_config(run, tmp_path, prune=False), log=lambda _line: None)
    assert (run / c.FULL_STATE_DIR / "epoch_1").is_dir()

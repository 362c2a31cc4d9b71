"""The Training results page of a running training: its progress and its curve so far, reloading."""

from __future__ import annotations

import re

from airflow_provider_sft.core.results.live_progress import SOURCE_TRAINER_STATUS, LiveProgress, Progress
from airflow_provider_sft.plugin.results import find_progress, find_results, render_page
from tests.unit.test_results_plugin import dag_run


def stored(run="sft-run-a", steps=12, total=40, source=SOURCE_TRAINER_STATUS) -> dict:
    """The ``training_progress`` XCom as a waiter stores it."""
    tracker = LiveProgress()
    for step in range(1, steps + 1):
        reading = Progress(
            source,
            step=step,
            total_steps=total,
            epoch=1,
            num_epochs=2,
            percent=100 * step // total,
            loss=3.0 / step,
            tokens_per_second=812.5,
            eta_seconds=(total - step) * 5,
        )
        tracker.observe(reading)
    return tracker.payload(run, updated="2026-12-06T04:00:00+00:00")


def page_of(task_id: str, results: dict, progress: dict, refresh: bool = True) -> str:
    run, found = find_results(results, task_id)
    live = None if found is not None else find_progress(progress, task_id, run)
    return render_page(task_id, run, found, live=live, refresh=refresh)


def test_a_running_train_task_shows_its_progress_and_curve_and_reloads():
    page = page_of("train", {}, {"train": stored()})  # no result yet: the task runs
    text = re.sub(r"<[^>]+>", " ", page)
    assert 'id="sft-progress-bar" max="100" value="30"' in page and "30%" in text
    assert "12 of 40" in text and "812 tokens/s" in text and "2m20s" in text
    assert "status.trainerStatus" in text
    assert 'id="sft-live-chart"' in page  # the curve so far
    assert '<meta http-equiv="refresh" content="15">' in page


def test_once_exported_the_final_results_win_and_the_page_stops_reloading():
    results = dag_run("sft-run-a", "sft-run-b")
    page = page_of("train", results, {"train": stored()}, refresh=False)
    assert 'id="sft-metrics"' in page and 'id="sft-progress"' not in page and "refresh" not in page


def test_a_finished_train_task_before_the_export_shows_the_last_progress_without_reloading():
    results = {"train": {"output_dir": "/workspace/runs/sft-run-a"}}
    page = page_of("train", results, {"train": stored()}, refresh=False)
    assert 'id="sft-progress"' in page and "no longer running" in page and "refresh" not in page


def test_another_runs_progress_is_not_shown_and_a_foreign_value_is_ignored():
    assert find_progress({"train": stored("sft-run-b")}, "export_model", "sft-run-a") is None
    assert find_progress({"train": {"progress": {"source": "x"}}}, "train", None) is None
    assert find_progress({"train": stored("sft-run-a")}, "export_model", "sft-run-a").source_task == "train"


def test_run_names_are_escaped():
    page = page_of("train", {}, {"train": stored("<b>run</b>")})
    assert "<b>run</b>" not in page and "&lt;b&gt;run&lt;/b&gt;" in page

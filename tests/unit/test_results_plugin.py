"""The Training results plugin: which run a task instance shows, and the page it renders."""

from __future__ import annotations

import re
from importlib.metadata import entry_points

import pytest
from fastapi import HTTPException

from airflow_provider_sft.get_provider_info import get_provider_info
from airflow_provider_sft.plugin import URL_ROUTE, SFTResultsPlugin
from airflow_provider_sft.plugin.results import _map_index, find_results, render_page, run_name_of

STEPS = [
    {
        "step": n,
        "epoch": 0,
        "loss": 3.0 / n,
        "lr": 1e-4,
        "samples_seen": 8 * n,
        "tokens": 100,
        "throughput": 5.0,
        "timestamp": None,
    }
    for n in range(1, 31)
]


def dag_run(run: str, other: str) -> dict:
    """One DAG run's return values as the tasks of the example DAG write them (cluster mode paths)."""
    return {
        "validate": None,
        "resolve_dataset": {"path": f"/workspace/runs/{run}-resolve/dataset/train.jsonl", "records": 235},
        "train": {"run_name": run, "output_dir": f"/workspace/runs/{run}", "backend": "kubernetes"},
        "export_model": {
            "model_path": f"/workspace/runs/{run}/final_model",
            "metrics_path": f"/workspace/runs/{run}/metrics.json",
            "metrics": {"final_loss": 0.1, "final_loss_smoothed": 0.12, "steps": 30},
            "steps": STEPS,
        },
        "export_other": {  # another training run's export in the same DAG run (a second branch)
            "metrics_path": f"/workspace/runs/{other}/metrics.json",
            "metrics": {"final_loss": 9.0},
            "steps": [],
        },
        "report": {"chart_path": f"/tmp/sft/runs/{run}/loss_chart.html"},  # the worker's side
    }


def test_each_task_of_a_run_finds_that_runs_exported_metrics():
    results = dag_run("sft-pipeline-train-abc", "sft-other")
    for task in ("train", "export_model", "report"):
        run, found = find_results(results, task)
        assert run == "sft-pipeline-train-abc", task
        assert (
            found is not None and found.source_task == "export_model" and found.metrics["final_loss"] == 0.1
        )
    assert find_results(results, "export_other")[1].metrics["final_loss"] == 9.0
    assert find_results(results, "validate") == (None, None)
    assert find_results(results, "missing") == (None, None)


def test_a_train_task_without_an_export_yet_says_so():
    results = dag_run("r1", "r2")
    del results["export_model"]
    run, found = find_results(results, "train")
    assert (run, found) == ("r1", None)
    page = render_page("train", run, found)
    assert "has no exported metrics yet" in page and "sft-loss-chart" not in page


def test_run_names_come_from_paths_never_from_other_values():
    assert run_name_of({"output_dir": "/workspace/runs/r1"}) == "r1"
    assert run_name_of({"chart_path": "/x/runs/r1/loss_chart.html"}) == "r1"
    assert run_name_of("not a dict") is None and run_name_of({"records": 3}) is None


def test_the_page_has_the_metrics_and_the_chart_with_plotly_from_this_server():
    run, found = find_results(dag_run("r1", "r2"), "train")
    page = render_page("train", run, found)
    assert 'id="sft-metrics"' in page and "Final loss (smoothed)" in page and "0.1200" in page
    assert 'id="sft-loss-chart"' in page and "Plotly.newPlot" in page
    assert not re.search(r"<script[^>]+src=[\"']?https?:", page)  # no CDN: works air-gapped
    assert '<script src="../../../static/plotly.min.js">' in page


def test_a_run_without_a_loss_says_no_data_instead_of_drawing_empty_axes():
    results = dag_run("r1", "r2")
    results["export_model"]["steps"] = [{**step, "loss": None} for step in STEPS[:3]]
    page = render_page("train", *find_results(results, "train"))
    assert 'id="sft-no-data"' in page and "no loss curve to draw" in page
    assert "sft-loss-chart" not in page and 'id="sft-metrics"' in page


def test_run_names_are_escaped_in_the_page():
    results = {"train": {"output_dir": "/w/runs/<script>x</script>"}}
    page = render_page("train", *find_results(results, "train"))
    assert "<script>x" not in page


def test_the_plugin_is_declared_so_installing_the_provider_is_enough():
    assert {
        "name": "sft",
        "plugin-class": "airflow_provider_sft.plugin.SFTResultsPlugin",
    } in get_provider_info()["plugins"]
    assert any(
        ep.value == "airflow_provider_sft.plugin:SFTResultsPlugin"
        for ep in entry_points(group="airflow.plugins")
    )
    (view,) = SFTResultsPlugin.external_views
    assert view["destination"] == "task_instance" and view["url_route"] == URL_ROUTE
    assert not view["href"].startswith(("/", "http"))  # relative to the UI's base URL
    (fastapi_app,) = SFTResultsPlugin.fastapi_apps
    assert view["href"].startswith(
        fastapi_app["url_prefix"].lstrip("/") + "/results/{DAG_ID}/{RUN_ID}/{TASK_ID}"
    )


def test_a_map_index_out_of_the_databases_range_is_the_requests_fault_not_a_500():
    assert (
        _map_index("{MAP_INDEX}") == -1 and _map_index("-1") == -1 and _map_index("2147483647") == 2**31 - 1
    )
    for bad in ("99999999999999999999999", "2147483648", "-2"):
        with pytest.raises(HTTPException) as refused:
            _map_index(bad)
        assert refused.value.status_code == 400 and "map_index" in refused.value.detail

"""The Training results plugin: which run a task instance shows, and the page it renders."""

from __future__ import annotations

import re
from importlib.metadata import entry_points

import pytest
from fastapi import HTTPException

from airflow_provider_sft.get_provider_info import get_provider_info
from airflow_provider_sft.plugin import URL_ROUTE, SFTResultsPlugin
from airflow_provider_sft.plugin.results import _map_index, find_data, find_results, render_page, run_name_of

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


def data_report(
    run_dir: str, *, lengths: tuple[int, ...] = (10, 60, 80, 120, 700), max_seq_len: int = 512
) -> dict:
    """A prepare task's report over samples of ``lengths`` tokens, its data in ``<run_dir>/data``."""
    from airflow_provider_sft.core.training.data_processing import ProcessedData
    from airflow_provider_sft.core.training.data_report import build_report

    kept = [n for n in lengths if 20 <= n < max_seq_len]
    processed = ProcessedData(
        list(lengths), len(kept), sum(kept), sum(kept) // 2, f"{run_dir}/data/data.jsonl"
    )
    return build_report(processed, max_seq_len=max_seq_len, effective_batch_size=2, num_epochs=3).to_dict()


def prepared_dag_run(run: str) -> tuple[dict, dict]:
    """A DAG run of the example DAG with its prepare task: its results and its ``report`` XComs."""
    results = dag_run(run, "sft-other")
    report = data_report(f"/workspace/runs/{run}")
    results["prepare_data"] = {"processed_dir": f"/workspace/runs/{run}/data", "report": report}
    return results, {"prepare_data": report}


def page_of(results: dict, reports: dict, task: str) -> str:
    run, found = find_results(results, task, reports)
    return render_page(task, run, found, find_data(results, reports, task, run, found))


def test_every_task_of_a_run_shows_the_data_report_and_the_export_s_is_preferred():
    results, reports = prepared_dag_run("r1")
    for task in ("prepare_data", "train", "export_model", "report"):
        run, found = find_results(results, task, reports)
        data = find_data(results, reports, task, run, found)
        assert run == "r1" and found is not None, task
        assert data is not None and data.source_task == "prepare_data" and not data.stopped, task
    trained_on = {**reports["prepare_data"], "input_samples": 77}  # what the pod processed itself
    results["export_model"]["data_report"] = trained_on
    data = find_data(results, reports, "prepare_data", *find_results(results, "prepare_data", reports))
    assert data is not None and data.trained_on and data.report.input_samples == 77
    assert data.source_task == "export_model"
    # another run's prepare task in the same DAG run is not this run's data
    other = data_report("/workspace/runs/sft-other")
    assert find_data(results, {"prepare_other": other}, "export_other", "sft-other", None).source_task == (
        "prepare_other"
    )
    assert find_data(results, {"prepare_other": other}, "train", "r1", None) is None


def test_the_data_section_has_the_figures_and_the_histogram_with_max_seq_len():
    page = page_of(*prepared_dag_run("r1"), "train")
    table = page[page.index('id="sft-data-report"') :]
    for figure in ("Samples in</th><td>5<", "Kept</th><td>3<", "under 20 tokens</th><td>1<"):
        assert figure in table
    assert "at or over max_seq_len (512)</th><td>1<" in table
    assert "Tokens counted by the loss" in table and "Optimizer steps per epoch (batch 2)</th><td>2<" in table
    assert "Optimizer steps in total (3 epochs)</th><td>6<" in table
    assert "Suggested max_seq_len (keeps 99%)</th><td>701<" in table  # samples were dropped
    assert 'id="sft-data-chart"' in page and "Plotly.newPlot" in page
    assert '"name":"dropped"' in page and '"name":"kept"' in page
    assert "max_seq_len 512" in page  # the line's label
    assert 'id="sft-loss-chart"' in page  # the loss chart is still there


def test_no_suggestion_when_nothing_is_dropped():
    results, reports = prepared_dag_run("r1")
    reports["prepare_data"] = data_report("/workspace/runs/r1", lengths=(30, 40, 50))
    page = page_of(results, reports, "train")
    assert "Samples in</th><td>3<" in page and "Suggested max_seq_len" not in page
    assert '"name":"dropped"' not in page


def test_a_prepare_task_its_gate_stopped_shows_its_data_and_says_training_did_not_run():
    """The gate fails the task after pushing ``report``: no result, no train or export result."""
    report = data_report("/workspace/runs/r1")
    results, reports = (
        {"resolve_dataset": {"path": "/workspace/runs/r1/dataset/train.jsonl"}},
        {"prepare_data": report},
    )
    run, found = find_results(results, "prepare_data", reports)
    data = find_data(results, reports, "prepare_data", run, found)
    assert run == "r1" and found is None and data is not None and data.stopped
    page = render_page("prepare_data", run, found, data)
    assert 'id="sft-not-trained"' in page and "Training did not run" in page
    assert "2 of 5 samples would be dropped" in page
    assert 'id="sft-data-chart"' in page and "has no exported metrics" not in page


def test_a_data_output_dir_outside_the_run_is_the_dag_runs_only_run():
    results, _ = prepared_dag_run("r1")
    del results["export_other"]  # one training run in this DAG run
    report = data_report("/data/mine")  # processed_dir /data/mine/data: "data", but no run dir there?
    report["processed_path"] = "/shared/prepared/data.jsonl"
    results["prepare_data"] = {"processed_dir": "/shared/prepared", "report": report}
    reports = {"prepare_data": report}
    assert run_name_of(results["prepare_data"]) is None  # no run is named after /shared
    run, found = find_results(results, "prepare_data", reports)
    assert run == "r1" and found is not None
    for task in ("prepare_data", "train"):
        data = find_data(results, reports, task, *find_results(results, task, reports))
        assert data is not None and data.source_task == "prepare_data", task
    # stopped there: no training run at all, the data is still shown
    stopped = {"resolve_dataset": results["resolve_dataset"]}
    run, found = find_results(stopped, "prepare_data", reports)
    data = find_data(stopped, reports, "prepare_data", run, found)
    assert run is None and data is not None and data.stopped
    assert "Training did not run" in render_page("prepare_data", run, found, data)


def test_a_value_that_is_no_data_report_is_ignored_not_a_500():
    results, _ = prepared_dag_run("r1")
    broken = data_report("/workspace/runs/r1")
    broken["histogram"] = {"edges": [0, 10], "counts": [1, 2, 3]}
    for value in (
        "text",
        {"input_samples": 3},
        broken,
        {**broken, "histogram": {"edges": [0, 10], "counts": [1]}, "max_seq_len": "<b>512</b>"},
        {**broken, "histogram": {"edges": [0, 10], "counts": ["<i>1</i>"]}},
        {**broken, "histogram": {"edges": [0, 10], "counts": [1]}, "percentiles": {"p50": True}},
        {**broken, "histogram": {"edges": [0, 10], "counts": [1]}, "percentiles": [50]},
        {**broken, "histogram": {"edges": [0, 10], "counts": [1]}, "processed_path": 3},
    ):
        reports = {"prepare_data": value}
        assert find_data(results, reports, "train", "r1", None) is None
        page = page_of(results, reports, "train")
        assert "sft-data" not in page and "<b>512" not in page and "<i>1" not in page


def test_task_and_run_names_are_escaped_and_no_data_path_is_shown():
    run = "r<script>x</script>"
    report = data_report(f"/workspace/runs/{run}")
    results, reports = {}, {"<img src=x>": report}
    run_found, found = find_results(results, "<img src=x>", reports)
    page = render_page(
        "<img src=x>", run_found, found, find_data(results, reports, "<img src=x>", run_found, found)
    )
    assert "Training did not run" in page and "sft-data-chart" in page
    assert "<script>x" not in page and "<img src=x>" not in page and "&lt;img src=x&gt;" in page
    assert "/workspace/runs" not in page  # where the data lies is no part of the page


def test_the_prepare_tasks_link_shows_once_it_has_a_report_even_when_its_gate_failed_it(monkeypatch):
    from airflow.models.taskinstancekey import TaskInstanceKey

    from airflow_provider_sft import links
    from airflow_provider_sft.operators.prepare import PrepareDataOperator

    op = PrepareDataOperator(task_id="prepare_data", dataset_path="d", workspace="/ws")
    assert any(isinstance(link, links.TrainingResultsLink) for link in op.operator_extra_links)
    xcoms: dict = {}
    monkeypatch.setattr(links.XCom, "get_value", staticmethod(lambda ti_key, key: xcoms.get(key)))
    key = TaskInstanceKey("sft_pipeline", "prepare_data", "r1", 1, -1)
    assert links.TrainingResultsLink().get_link(op, ti_key=key) == ""  # not run yet
    xcoms["report"] = data_report("/ws/runs/r1")  # pushed, then the gate failed the task
    assert (
        links.TrainingResultsLink()
        .get_link(op, ti_key=key)
        .endswith("/tasks/prepare_data/plugin/sft-results")
    )

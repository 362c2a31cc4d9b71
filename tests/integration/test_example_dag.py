"""The example DAG end to end through real Airflow (`airflow dags test`) on the local backend."""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import time
from pathlib import Path

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.results.export import verify_manifest
from airflow_provider_sft.demo import DEMO_TRAINING, EXAMPLE_DAGS, generate_reply, run_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_run(tiny_model, tmp_path_factory):
    workspace = tmp_path_factory.mktemp("workspace")
    conf = {"base_model": str(tiny_model), "workspace": str(workspace), "gpu_hour_cost": 1.5, **DEMO_TRAINING}
    # OpenLineage (installed with the test extra) writes its events to a file: one transport, no server.
    transport = {"type": "file", "log_file_path": str(workspace / "openlineage.jsonl"), "append": True}
    extra_env = {"AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport)}
    started = time.monotonic()
    log = run_pipeline(workspace, EXAMPLE_DAGS, conf, echo=False, extra_env=extra_env)
    record_demo_time(time.monotonic() - started)
    return workspace, log


def record_demo_time(seconds: float) -> None:
    """One line per Airflow the suite ran the demo on (scripts/test.sh prints them at the end)."""
    from airflow import __version__ as airflow_version

    artifacts = Path(os.environ.get("SFT_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / f"demo-pipeline-airflow-{airflow_version}.txt").write_text(
        f"Airflow {airflow_version}: the demo pipeline (airflow dags test sft_pipeline, local backend) "
        f"succeeded in {seconds:.1f} s\n"
    )


def xcoms(workspace, task_id):
    with sqlite3.connect(workspace / "airflow" / "airflow.db") as db:
        rows = db.execute("SELECT key, value FROM xcom WHERE task_id = ?", (task_id,)).fetchall()
    # Airflow stores XCom values as JSON; SQLite hands scalars back already decoded.
    return {key: json.loads(value) if isinstance(value, str | bytes) else value for key, value in rows}


def test_dag_run_succeeds_with_every_task(pipeline_run):
    _workspace, log = pipeline_run
    text = log.read_text()
    assert "state=success" in text
    for task in ("resolve_dataset", "prepare_data", "train", "export_model", "report"):
        assert f"task_id={task}" in text


def test_data_is_prepared_on_the_cpu_step_and_reused_by_the_training_process(pipeline_run):
    workspace, log = pipeline_run
    text = log.read_text()
    prepared = xcoms(workspace, "prepare_data")
    report = prepared["report"]
    assert report["input_samples"] == report["kept_samples"] == 235 and report["dropped_samples"] == 0
    assert (
        sum(report["histogram"]["counts"]) == 235 and report["total_steps"] == 6 * report["steps_per_epoch"]
    )
    assert 0 < report["label_tokens"] < report["total_tokens"]
    assert Path(prepared["processed_dir"]) == run_dir_of(workspace) / "data"  # where training reads it
    # the training process found the fingerprint equal and did not tokenize again
    assert f"(fingerprint {prepared['fingerprint_id']}) is reused, not processed again" in text
    assert "processing the data here" not in text
    # what the run trained on is kept with its metrics, and reached the export's XCom
    metrics = json.loads((run_dir_of(workspace) / c.METRICS_SUMMARY_FILE).read_text())
    assert metrics["data"]["kept_samples"] == 235 and metrics["data"]["histogram"] == report["histogram"]
    assert xcoms(workspace, "export_model")["data_report"]["total_steps"] == report["total_steps"]


def run_dir_of(workspace):
    return Path(xcoms(workspace, "train")["output_dir"])


def test_exported_model_loads_and_generates(pipeline_run):
    workspace, _ = pipeline_run
    model_dir = run_dir_of(workspace) / c.FINAL_MODEL_DIR
    assert verify_manifest(model_dir) == []
    reply = generate_reply(model_dir, "What is the capital of Italy?")
    assert isinstance(reply, str) and reply  # format learned; facts of a 2.5M-param model are not asserted


def test_training_loss_falls(pipeline_run):
    workspace, _ = pipeline_run
    run_dir = run_dir_of(workspace)
    lines = [json.loads(line) for line in (run_dir / c.METRICS_FILE).read_text().splitlines()]
    losses = [s["avg_loss"] for s in lines if not s.get("hparams")]  # the run's and node 0's facts lines
    assert len(losses) >= 20
    assert statistics.mean(losses[-10:]) < statistics.mean(losses[:10])


def test_metrics_and_chart_are_written_and_linked_by_xcom(pipeline_run):
    workspace, _ = pipeline_run
    run_dir = run_dir_of(workspace)  # every output of the DAG run is under its run
    metrics = json.loads((run_dir / c.METRICS_SUMMARY_FILE).read_text())
    assert metrics["steps"] == 180 and metrics["final_loss"] < metrics["perplexity"]
    chart = workspace / c.RUNS_DIR / run_dir.name / c.LOSS_CHART_FILE
    html = chart.read_text()
    assert "Plotly.newPlot" in html and '<script src="http' not in html

    dataset = xcoms(workspace, "resolve_dataset")
    train = xcoms(workspace, "train")
    export = xcoms(workspace, "export_model")
    report = xcoms(workspace, "report")
    assert dataset["path"].startswith(str(workspace / c.RUNS_DIR)) and dataset["records"] >= 200
    assert dataset["path"].endswith("/dataset/train.jsonl") and not (workspace / "dataset").exists()
    assert train["output_dir"].startswith(str(workspace / c.RUNS_DIR))
    assert train["training_job"]["backend"] == "local"
    assert export["model_path"] == str(run_dir / c.FINAL_MODEL_DIR)
    assert export["metrics"]["final_loss"] == metrics["final_loss"]
    assert report["chart_path"] == str(chart)
    latest = json.loads((workspace / c.LATEST_FILE).read_text())
    assert latest["model_path"] == export["model_path"]


def test_the_demo_runs_efficiency_reaches_metrics_json_the_chart_and_the_summary(pipeline_run):
    """The train task's job_created XCom reaches the export, whose efficiency XCom reaches the chart."""
    workspace, log = pipeline_run
    run_dir = run_dir_of(workspace)
    efficiency = json.loads((run_dir / c.METRICS_SUMMARY_FILE).read_text())["efficiency"]
    train, export = xcoms(workspace, "train"), xcoms(workspace, "export_model")
    assert train["job_created"] == train["training_job"]["created"]
    assert export["efficiency"] == efficiency
    assert efficiency["device"] == "cpu" and efficiency["tokens_per_second"] > 0
    assert efficiency["time_to_first_step_from"] == "job_created"
    assert 0 < efficiency["time_to_first_step_seconds"] < 600
    assert efficiency["gpu_hour_cost"] == 1.5 and efficiency["cost"] is None  # a CPU run: n/a
    assert efficiency["mfu"] is None and efficiency["gpu_hours"] is None
    html = (workspace / c.RUNS_DIR / run_dir.name / c.LOSS_CHART_FILE).read_text()
    tokens = f"{efficiency['tokens_per_second']:,.0f}"
    assert f"<tr><th>Tokens/s</th><td>{tokens}</td><td></td></tr>" in html
    assert "<tr><th>MFU</th><td>n/a</td><td>a CPU run: there is no GPU</td></tr>" in html
    assert (
        f"; {efficiency['tokens_per_second']:.0f} tokens/s, n/a tokens/s per GPU, MFU n/a" in log.read_text()
    )


def test_openlineage_links_dataset_to_model(pipeline_run):
    workspace, _ = pipeline_run
    events = [json.loads(line) for line in (workspace / "openlineage.jsonl").read_text().splitlines()]
    done = {
        e["job"]["name"].rsplit(".", 1)[-1]: e
        for e in events
        if e["eventType"] == "COMPLETE" and e["job"]["name"].startswith("sft_pipeline.")
    }

    def names(event, side):
        return [(d["namespace"], d["name"]) for d in event[side]]

    dataset_file = ("file", xcoms(workspace, "resolve_dataset")["path"])
    assert dataset_file in names(done["resolve_dataset"], "outputs")
    assert dataset_file in names(done["train"], "inputs")
    run_dir = run_dir_of(workspace)
    assert names(done["train"], "outputs") == [("file", str(run_dir))]
    assert names(done["export_model"], "outputs") == [("file", str(run_dir / c.FINAL_MODEL_DIR))]
    assert names(done["export_model"], "inputs")[0][1].startswith(str(run_dir))


def test_the_export_emits_the_models_asset_event_through_the_alias(pipeline_run):
    workspace, _ = pipeline_run
    with sqlite3.connect(workspace / "airflow" / "airflow.db") as db:
        rows = db.execute(
            "SELECT asset.uri, asset_event.extra, asset_event.source_task_id, asset_alias.name"
            " FROM asset_event JOIN asset ON asset.id = asset_event.asset_id"
            " JOIN asset_alias_asset_event ON asset_alias_asset_event.event_id = asset_event.id"
            " JOIN asset_alias ON asset_alias.id = asset_alias_asset_event.alias_id"
        ).fetchall()
    ((uri, extra, task, alias),) = rows
    extra = json.loads(extra)
    export = xcoms(workspace, "export_model")
    assert (uri, task, alias) == (f"file://{workspace}/{c.LATEST_FILE}", "export_model", "sft_models")
    assert extra["model_path"] == export["model_path"] == str(run_dir_of(workspace) / c.FINAL_MODEL_DIR)
    metrics = export["metrics"]
    assert extra["final_loss"] == metrics["final_loss"] and extra["total_tokens"] == metrics["total_tokens"]
    assert extra["validation_loss"] == metrics["validation_loss"]  # None: the demo holds no split out
    assert extra["gpu_hours"] is None and extra["publication"] is None  # a CPU run, no publish_to


@pytest.fixture(scope="module")
def evaluate_run(pipeline_run):
    """``airflow dags test sft_evaluate`` after the pipeline: it takes the alias's newest model."""
    workspace, _ = pipeline_run
    return workspace, run_pipeline(workspace, EXAMPLE_DAGS, {}, echo=False, dag_id="sft_evaluate")


def test_sft_evaluate_evaluates_the_model_the_pipeline_exported(evaluate_run):
    workspace, log = evaluate_run
    result = xcoms(workspace, "evaluate")
    assert result["model"] == str(run_dir_of(workspace) / c.FINAL_MODEL_DIR)
    assert result["source_run"] == run_dir_of(workspace).name and result["conversations"] == 12
    assert 1.0 < result["perplexity"] < 200.0  # the untrained tiny model scores ~500 on this file
    text = log.read_text()
    assert f"Perplexity on chat_sft_heldout.jsonl: {result['perplexity']:.4f}" in text
    assert repr(result["reply"]) in text
    from airflow_provider_sft.core.results.evaluate import bundled_held_out_path

    for line in bundled_held_out_path().read_text().splitlines():  # the validation records: never logged
        for message in json.loads(line)["messages"][1:]:
            assert message["content"] not in text

"""The model's Airflow Asset starts ``sft_evaluate`` by itself: a real ``airflow standalone``,
driven and read only through its REST API.

The example pipeline is triggered on the local backend (no ``publish_to``: the asset is the
workspace's ``latest.json``); the export's asset event, emitted through the ``sft_models`` alias,
must queue ``sft_evaluate`` (scheduled on that alias), whose run is ``asset_triggered``, succeeds,
evaluates the model that run exported, and leaves its perplexity in XCom.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest

from airflow_provider_sft.demo import DEMO_TRAINING
from tests.integration.conftest import wait_for_dag_run

pytestmark = pytest.mark.slow
EVALUATE = "sft_evaluate"


def _value(answer):
    assert answer.status_code == 200, answer.text
    value = answer.json()["value"]
    if not isinstance(value, str):
        return value
    try:  # the API hands a structured value back as its JSON text, a string as itself
        return json.loads(value)
    except ValueError:
        return value


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _unpaused(standalone, dag_id: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the DAG processor parses the second file too
        if standalone.session.get(f"{standalone.base}/api/v2/dags/{dag_id}", timeout=10).status_code == 200:
            break
        time.sleep(1)
    answer = standalone.session.patch(
        f"{standalone.base}/api/v2/dags/{dag_id}", json={"is_paused": False}, timeout=10
    )
    assert answer.ok, answer.text


def _evaluate_run_of(standalone, pipeline_run_id: str, timeout: float = 300) -> dict:
    """The ``sft_evaluate`` run whose triggering asset event came from ``pipeline_run_id``, finished."""
    base, session = standalone.base, standalone.session
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = session.get(f"{base}/api/v2/dags/{EVALUATE}/dagRuns", timeout=10).json()["dag_runs"]
        for run in runs:
            events = session.get(
                f"{base}/api/v2/dags/{EVALUATE}/dagRuns/{run['dag_run_id']}/upstreamAssetEvents", timeout=10
            ).json()["asset_events"]
            ours = any(event["source_run_id"] == pipeline_run_id for event in events)
            if ours and run["state"] in ("success", "failed"):
                return run | {"events": events}
        time.sleep(2)
    raise AssertionError(f"no finished {EVALUATE} run triggered by {pipeline_run_id} within {timeout} s")


def test_the_exported_models_asset_event_runs_sft_evaluate(airflow_standalone, tiny_model, tmp_path):
    standalone = airflow_standalone
    base, session = standalone.base, standalone.session
    _unpaused(standalone, EVALUATE)  # before the export: a paused DAG is not queued by an event
    workspace = tmp_path / "ws"
    conf = {**DEMO_TRAINING, "num_epochs": 1, "base_model": str(tiny_model), "workspace": str(workspace)}
    created = session.post(
        f"{base}/api/v2/dags/sft_pipeline/dagRuns", json={"conf": conf, "logical_date": None}, timeout=30
    )
    assert created.status_code == 200, created.text
    pipeline_run_id = created.json()["dag_run_id"]
    assert wait_for_dag_run(standalone, pipeline_run_id) == "success"

    export_url = f"{base}/api/v2/dags/sft_pipeline/dagRuns/{pipeline_run_id}/taskInstances/export_model"
    export = session.get(export_url, timeout=10).json()
    model_path = _value(session.get(f"{export_url}/xcomEntries/model_path", timeout=10))
    metrics = _value(session.get(f"{export_url}/xcomEntries/metrics", timeout=10))

    run = _evaluate_run_of(standalone, pipeline_run_id)
    assert run["run_type"] == "asset_triggered" and run["state"] == "success", run
    (event,) = [e for e in run["events"] if e["source_run_id"] == pipeline_run_id]
    assert event["uri"] == f"file://{workspace}/latest.json"  # the destination, stable across runs
    assert event["source_dag_id"] == "sft_pipeline" and event["source_task_id"] == "export_model"
    extra = event["extra"]
    assert extra["model_path"] == model_path and extra["model_uri"] == f"file://{model_path}"
    assert extra["final_loss"] == metrics["final_loss"] and extra["total_tokens"] == metrics["total_tokens"]
    assert extra["run_id"] == pipeline_run_id and extra["publication"] is None

    evaluate_url = f"{base}/api/v2/dags/{EVALUATE}/dagRuns/{run['dag_run_id']}/taskInstances/evaluate"
    perplexity = _value(session.get(f"{evaluate_url}/xcomEntries/perplexity", timeout=10))
    assert isinstance(perplexity, float) and 1.0 < perplexity < 1000.0
    assert _value(session.get(f"{evaluate_url}/xcomEntries/model", timeout=10)) == model_path
    assert _value(session.get(f"{evaluate_url}/xcomEntries/source_run_id", timeout=10)) == pipeline_run_id

    delay = (_when(run["start_date"]) - _when(export["end_date"])).total_seconds()
    print(f"\nexport_model ended -> {EVALUATE} run started: {delay:.1f} s")
    assert 0 <= delay < 120


def test_a_bad_publish_to_is_refused_by_the_form_or_named_by_validate(airflow_standalone):
    standalone = airflow_standalone
    base, session = standalone.base, standalone.session
    refused = session.post(
        f"{base}/api/v2/dags/sft_pipeline/dagRuns",
        json={"conf": {"publish_to": "/srv/models"}, "logical_date": None},
        timeout=30,
    )
    assert refused.status_code == 400 and "publish_to" in refused.text  # before any run exists
    created = session.post(
        f"{base}/api/v2/dags/sft_pipeline/dagRuns",
        json={"conf": {"publish_to": "hf://acme"}, "logical_date": None},  # the form's pattern lets it by
        timeout=30,
    )
    assert created.status_code == 200, created.text
    run_id = created.json()["dag_run_id"]
    assert wait_for_dag_run(standalone, run_id, timeout=300) == "failed"
    tasks = session.get(f"{base}/api/v2/dags/sft_pipeline/dagRuns/{run_id}/taskInstances", timeout=10).json()
    states = {task["task_id"]: task["state"] for task in tasks["task_instances"]}
    assert states["validate"] == "failed" and states["resolve_dataset"] == "upstream_failed"
    log = session.get(
        f"{base}/api/v2/dags/sft_pipeline/dagRuns/{run_id}/taskInstances/validate/logs/1",
        headers={"Accept": "application/x-ndjson"},
        timeout=30,
    ).text
    assert "publish_to: 'hf://acme': a Hub destination is hf://org/name[@revision]" in log


CONSUMER = """
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Asset

with DAG(dag_id="on_the_workspace_asset", schedule=[Asset("{uri}")], catchup=False):
    EmptyOperator(task_id="noted")
"""


def test_a_dag_scheduled_on_the_concrete_asset_runs_too(tmp_path, tiny_model):
    """Not the alias: ``schedule=[Asset("file://<workspace>/latest.json")]``, as a user writes it."""
    from airflow_provider_sft.demo import EXAMPLE_DAGS
    from tests.integration.conftest import running_demo

    workspace = tmp_path / "ws"
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "sft_pipeline.py").symlink_to(EXAMPLE_DAGS / "sft_pipeline.py")
    (dags / "consumer.py").write_text(CONSUMER.format(uri=f"file://{workspace}/latest.json"))
    (tmp_path / "home").mkdir()
    with running_demo(tmp_path / "home", dags_folder=dags) as standalone:
        base, session = standalone.base, standalone.session
        _unpaused(standalone, "on_the_workspace_asset")
        conf = {**DEMO_TRAINING, "num_epochs": 1, "base_model": str(tiny_model), "workspace": str(workspace)}
        created = session.post(
            f"{base}/api/v2/dags/sft_pipeline/dagRuns", json={"conf": conf, "logical_date": None}, timeout=30
        )
        assert created.status_code == 200, created.text
        assert wait_for_dag_run(standalone, created.json()["dag_run_id"]) == "success"
        deadline, runs = time.monotonic() + 120, []
        while time.monotonic() < deadline:
            url = f"{base}/api/v2/dags/on_the_workspace_asset/dagRuns"
            runs = session.get(url, timeout=10).json()["dag_runs"]
            if runs and runs[0]["state"] in ("success", "failed"):
                break
            time.sleep(2)
        assert [(run["run_type"], run["state"]) for run in runs] == [("asset_triggered", "success")]

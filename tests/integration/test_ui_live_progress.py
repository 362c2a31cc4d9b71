"""The Training results tab of a RUNNING train task shows its progress and its loss curve so far.

Headless Chromium on a real ``airflow standalone`` (the session's ``airflow_standalone``): a run of
the example DAG on the local backend, long enough (12 epochs) to be looked at while it trains.
The page is read while the task instance is still ``running``; the screenshot is kept under
``test-artifacts/ui/``. After the run, the train task's log file has the progress lines.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import requests

from airflow_provider_sft.core.results.live_progress import PROGRESS_XCOM_KEY
from airflow_provider_sft.demo import DAG_ID, DEMO_TRAINING
from tests.integration.conftest import wait_for_dag_run
from tests.integration.test_ui import ARTIFACTS, page  # noqa: F401 (the logged-in browser page)

pytestmark = pytest.mark.slow
PROGRESS_LINE = re.compile(r"^progress (\d+)%: step (\d+)/(\d+), .* \(from training output\)$")


def get(standalone, url: str, **kwargs) -> requests.Response:
    """A REST read that waits out a busy machine (the training shares its cores with the server)."""
    for _ in range(5):
        try:
            return standalone.session.get(url, timeout=60, **kwargs)
        except requests.Timeout:
            continue
    raise AssertionError(f"the API server did not answer {url}")


def train_state(standalone, run_id: str) -> str:
    url = f"{standalone.base}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/train"
    return str(get(standalone, url).json()["state"])


def stored_percent(standalone, run_id: str) -> int | None:
    url = (
        f"{standalone.base}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/train/"
        f"xcomEntries/{PROGRESS_XCOM_KEY}"
    )
    answer = get(standalone, url, params={"deserialize": True})
    if not answer.ok:
        return None
    value = answer.json()["value"]
    value = json.loads(value) if isinstance(value, str) else value
    return value["progress"]["percent"]


def test_the_tab_of_a_running_train_task_shows_its_progress_under_100_percent(
    page,  # noqa: F811
    airflow_standalone,
    tiny_model,
    tmp_path_factory,
):
    standalone = airflow_standalone
    workspace = tmp_path_factory.mktemp("live-progress")
    conf = {**DEMO_TRAINING, "num_epochs": 12, "base_model": str(tiny_model), "workspace": str(workspace)}
    created = standalone.session.post(
        f"{standalone.base}/api/v2/dags/{DAG_ID}/dagRuns",
        json={"conf": conf, "logical_date": None},
        timeout=30,
    )
    assert created.status_code == 200, created.text
    run_id = created.json()["dag_run_id"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # training, and a second reading stored (a curve of 2 points)
        if train_state(standalone, run_id) == "running" and (stored_percent(standalone, run_id) or 0) > 0:
            break
        assert train_state(standalone, run_id) not in ("failed", "upstream_failed", "success")
        time.sleep(2)

    page.goto(f"{standalone.base}/dags/{DAG_ID}/runs/{run_id}/tasks/train")
    page.get_by_role("link", name="Training results").click()
    frame = page.frame_locator("iframe").first
    frame.locator("#sft-live-chart .main-svg").first.wait_for()
    figures = frame.locator("#sft-progress").inner_text()
    shown = frame.locator("#sft-live").inner_text()
    page.screenshot(path=str(ARTIFACTS / "train-task-training-progress.png"))
    assert train_state(standalone, run_id) == "running"  # read while the task ran
    (percent,) = re.findall(r"Progress\s+(\d+)%", figures)
    assert 0 < int(percent) < 100, figures
    assert "in progress" in shown and "training output" in figures
    assert frame.locator("#sft-live-chart .scatterlayer .trace path.js-line").count() >= 1  # drawn

    assert wait_for_dag_run(standalone, run_id) == "success"
    logs = standalone.home / "logs" / f"dag_id={DAG_ID}"
    (task_log,) = [p for p in logs.glob("run_id=*/task_id=train/attempt=*.log") if run_id in str(p)]
    events = [str(json.loads(line).get("event", "")) for line in task_log.read_text().splitlines() if line]
    lines = [match for event in events if (match := PROGRESS_LINE.match(event))]
    percents = [int(match[1]) for match in lines]
    assert len(lines) >= 3 and percents == sorted(set(percents)) and percents[-1] == 100, events

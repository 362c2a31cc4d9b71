"""The Airflow UI as a user meets it: headless Chromium clicking a real ``sft-demo --serve``.

Logs in through the simple auth manager's form, opens the example DAG's trigger dialog, refuses
a bad quantity before any run exists, triggers with the form's defaults (the demo's tiny model)
until the run succeeds, and opens the train task instance's *Training results* tab: the loss
chart and metrics the provider's plugin serves, and the data report with its token-length
histogram (there and on the prepare task's tab). Screenshots are kept under
``test-artifacts/ui/`` (``$SFT_TEST_ARTIFACTS``). Skipped with the reason where chromium or
playwright is missing (``scripts/test.sh`` installs both).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.conftest import REPO_ROOT
from tests.integration.conftest import running_demo, wait_for_dag_run

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(os.environ.get("SFT_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts")) / "ui"
DAG_ID = "sft_pipeline"


@pytest.fixture(scope="module")
def page(airflow_standalone):
    """A logged-in browser page (the real login form, not an injected cookie)."""
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(60_000)
        page.goto(f"{airflow_standalone.base}/")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", airflow_standalone.password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{airflow_standalone.base}/")
        yield page
        browser.close()


def dag_runs(standalone) -> list[dict]:
    answer = standalone.session.get(f"{standalone.base}/api/v2/dags/{DAG_ID}/dagRuns", timeout=10)
    assert answer.ok, answer.text
    return answer.json()["dag_runs"]


def open_trigger_dialog(page, standalone):
    page.goto(f"{standalone.base}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.locator("[role=dialog][data-state=open]")
    dialog.wait_for()
    return dialog


def test_a_bad_quantity_typed_into_the_form_is_refused_before_any_run_exists(page, airflow_standalone):
    before = len(dag_runs(airflow_standalone))
    dialog = open_trigger_dialog(page, airflow_standalone)
    dialog.get_by_role("button", name="Resources").click()
    memory = dialog.locator("#element_resource_memory_per_worker")
    assert memory.input_value() == "8Gi"  # the demo's default, from the form
    memory.fill("64GB")
    dialog.get_by_role("button", name="Trigger", exact=True).click()
    error = dialog.get_by_text(re.compile(r"Invalid input for param resource_memory_per_worker"))
    error.wait_for()
    error.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "trigger-form-bad-quantity.png"))
    text = error.inner_text()
    assert "'64GB' does not match" in text
    assert "'title': 'Memory per worker'" in text and "64Gi" in text  # the field's title, an example
    assert len(dag_runs(airflow_standalone)) == before  # refused: no run was created
    page.keyboard.press("Escape")


@pytest.mark.parametrize(
    ("field", "typed", "message"),
    [
        ("effective_batch_size", "-8", "-8 is less than the minimum of 1"),
        ("num_epochs", "0", "0 is less than the minimum of 1"),
    ],
)
def test_a_bad_number_typed_into_the_form_is_refused_as_typed_not_clamped(
    page, airflow_standalone, field, typed, message
):
    """Airflow's number input clamps to a schema's top-level minimum: -8 became 1 and a run started."""
    before = len(dag_runs(airflow_standalone))
    dialog = open_trigger_dialog(page, airflow_standalone)
    dialog.get_by_role("button", name="Model and training").click()
    number = dialog.locator(f'[id="number-input:element_{field}"] input')
    number.fill(typed)
    number.press("Tab")  # leaving the field is when the input clamps
    assert number.input_value() == typed
    dialog.get_by_role("button", name="Trigger", exact=True).click()
    error = dialog.get_by_text(re.compile(rf"Invalid input for param {field}"))
    error.wait_for()
    error.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"trigger-form-bad-{field}.png"))
    assert message in error.inner_text()
    assert len(dag_runs(airflow_standalone)) == before  # no run, with this value or another
    page.keyboard.press("Escape")


def test_a_secret_in_envs_stays_out_of_the_audit_log(airflow_standalone):
    secret = "hf_AuditLogSecret42"
    answer = airflow_standalone.session.post(
        f"{airflow_standalone.base}/api/v2/dags/{DAG_ID}/dagRuns",
        json={"logical_date": None, "conf": {"envs": f"MY_API_TOKEN={secret},NCCL_DEBUG=INFO"}},
        timeout=10,
    )
    assert answer.ok, answer.text
    events = airflow_standalone.session.get(
        f"{airflow_standalone.base}/api/v2/eventLogs",
        params={"event": "trigger_dag_run", "order_by": "-when", "limit": 5},
        timeout=10,
    ).json()["event_logs"]
    assert '"envs": "***"' in events[0]["extra"]  # the newest trigger: this one
    assert secret not in json.dumps(events)
    airflow_standalone.session.patch(  # not trained: the run is not what this test is about
        f"{airflow_standalone.base}/api/v2/dags/{DAG_ID}/dagRuns/{answer.json()['dag_run_id']}",
        json={"state": "failed"},
        timeout=10,
    )


def test_trigger_with_the_defaults_trains_and_the_train_task_shows_its_loss_chart(page, airflow_standalone):
    before = {run["dag_run_id"] for run in dag_runs(airflow_standalone)}
    dialog = open_trigger_dialog(page, airflow_standalone)
    assert "Model and training" in dialog.inner_text()
    page.screenshot(path=str(ARTIFACTS / "trigger-form.png"))
    dialog.get_by_role("button", name="Trigger", exact=True).click()
    dialog.wait_for(state="hidden")
    (run_id,) = {run["dag_run_id"] for run in dag_runs(airflow_standalone)} - before
    assert wait_for_dag_run(airflow_standalone, run_id) == "success"

    # The train task instance's "Training results" tab: the plugin's page in an iframe.
    page.goto(f"{airflow_standalone.base}/dags/{DAG_ID}/runs/{run_id}/tasks/train")
    page.get_by_role("link", name="Training results").click()  # the plugin's tab, next to Logs
    frame = page.frame_locator("iframe").first
    frame.locator("#sft-loss-chart .main-svg").first.wait_for()
    metrics = frame.locator("#sft-metrics").inner_text()
    assert "Final loss (smoothed)" in metrics and "Final loss (last step)" in metrics
    steps = frame.locator("#sft-metrics tr", has_text="Steps").inner_text()
    assert steps.split()[-1] == "180"  # the demo's 180 optimizer steps
    lines = frame.locator("#sft-loss-chart .scatterlayer .trace path.js-line")
    assert lines.count() >= 3  # raw loss, smoothed loss, learning rate: drawn, not just declared
    page.screenshot(path=str(ARTIFACTS / "train-task-training-results.png"))
    assert_data_section(frame, steps="180")  # the train tab shows the data it trained on too

    # The prepare task's tab: the data report and its histogram, with the max_seq_len line.
    page.goto(f"{airflow_standalone.base}/dags/{DAG_ID}/runs/{run_id}/tasks/prepare_data")
    page.get_by_role("link", name="Training results").click()
    frame = page.frame_locator("iframe").first
    assert_data_section(frame, steps="180")
    frame.locator("#sft-data-chart").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "data-report.png"))

    # The extra link points there over http(s); no training job link without a cluster job.
    links = airflow_standalone.session.get(
        f"{airflow_standalone.base}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/train/links",
        timeout=10,
    ).json()["extra_links"]
    assert links["Training results"].startswith(f"{airflow_standalone.base}/dags/{DAG_ID}/runs/")
    assert links["Training results"].endswith("/tasks/train/plugin/sft-results")
    assert not links.get("Training job")


def assert_data_section(frame, *, steps: str) -> None:
    """The *Data* section: its figures, and the histogram drawn with bars and the max_seq_len line."""
    frame.locator("#sft-data-chart .main-svg").first.wait_for()
    table = frame.locator("#sft-data-report")
    for label in (
        "Samples in",
        "Kept",
        "Dropped: at or over max_seq_len (512)",
        "Tokens counted by the loss",
    ):
        assert label in table.inner_text(), label
    total = frame.locator("#sft-data-report tr", has_text="Optimizer steps in total").inner_text()
    assert total.split()[-1] == steps  # what the report foresaw is what the run took
    assert frame.locator("#sft-data-chart .barlayer .point").count() > 0  # bars drawn, not just declared
    assert frame.locator("#sft-data-chart .shapelayer path").count() == 1  # the max_seq_len line
    label = frame.locator("#sft-data-chart .annotation-text").text_content()  # an SVG text
    assert label == "max_seq_len 512"


def test_the_plugin_page_needs_airflows_login(airflow_standalone):
    url = f"{airflow_standalone.base}/sft/results/{DAG_ID}/any-run/train"
    assert requests.get(url, timeout=10).status_code in (401, 403)
    forged = requests.get(url, headers={"Authorization": "Bearer not-a-token"}, timeout=10)
    assert forged.status_code in (401, 403)
    assert airflow_standalone.session.get(url, timeout=10).status_code == 200
    # A map index the database column cannot hold is a 400 naming it, not a 500.
    answer = airflow_standalone.session.get(url, params={"map_index": "9" * 23}, timeout=10)
    assert answer.status_code == 400 and "map_index" in answer.text


def process_tree(root: int) -> dict[int, psutil.Process]:
    """``root`` and every process below it, and every process in any of their sessions."""
    tree = {root: psutil.Process(root)} | {p.pid: p for p in psutil.Process(root).children(recursive=True)}
    sessions = set()
    for pid in tree:
        with contextlib.suppress(OSError):
            sessions.add(os.getsid(pid))
    for process in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(process.pid) in sessions:
                tree.setdefault(process.pid, process)
    return tree


def still_running(processes: dict[int, psutil.Process]) -> list[str]:
    left = []
    for process in processes.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
    return left


@contextlib.contextmanager
def default_log_server_ports_taken():
    """Airflow's fixed log-server ports held, as by another Airflow on the host (where free)."""
    with contextlib.ExitStack() as stack:
        for port in (8793, 8794):
            holder = stack.enter_context(socket.socket())
            with contextlib.suppress(OSError):
                holder.bind(("", port))
                holder.listen()
        yield


def test_ctrl_c_on_the_demo_mid_training_leaves_no_process_of_it_behind(tmp_path):
    with default_log_server_ports_taken(), running_demo(tmp_path) as demo:
        answer = demo.session.post(
            f"{demo.base}/api/v2/dags/{DAG_ID}/dagRuns", json={"logical_date": None}, timeout=10
        )
        assert answer.ok, answer.text
        run_id = answer.json()["dag_run_id"]
        train = f"{demo.base}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/train"
        deadline = time.monotonic() + 300
        while demo.session.get(train, timeout=10).json().get("state") != "running":
            assert time.monotonic() < deadline, "the train task never started"
            time.sleep(2)
        time.sleep(5)  # the training process is up
        tree = process_tree(demo.process.pid)
        commands = " ".join(" ".join(p.cmdline()) for p in tree.values() if p.is_running())
        assert "airflow_provider_sft.core.pod.entrypoint train" in commands  # the training, its own group
        assert len(tree) >= 8  # standalone, its 4 components, executor workers, the task, the training
        demo.process.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        deadline = time.monotonic() + 30
        while still_running(tree) and time.monotonic() < deadline:
            time.sleep(1)
        assert still_running(tree) == []
        assert demo.process.wait(5) == 0
        log = (tmp_path / "standalone.log").read_text()
        assert "address already in use" not in log.lower()  # log servers on free ports

"""The train task's Airflow log is readable: the provider's lines and progress, no training data.

The example DAG runs on the local backend in a real ``airflow standalone`` (the session's
``airflow_standalone``), triggered over REST: its scheduler runs the task under Airflow's
supervisor, which writes the task log file the UI shows (``airflow dags test`` writes none).
Two epochs, 60 steps: what is asserted here is the log, not the model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from airflow_provider_sft.core.sample_data import bundled_dataset_path
from airflow_provider_sft.demo import DAG_ID, DEMO_TRAINING

pytestmark = pytest.mark.slow

#: What instructlab's data processing prints: sample previews, their masked labels, its statistics.
DATA_PROCESSING_DUMPS = (
    "Original Input",
    "Pretraining ex sample",
    "Instruction ex sample",
    "<|MASK|>",
    "quantile",
    "Samples Previews",
)
FULL_OUTPUT = "[sft] full output: "


@pytest.fixture(scope="module")
def train_logs(
    airflow_standalone, tiny_model, tmp_path_factory
) -> tuple[list[dict], str, list[dict], list[dict]]:
    """The train task's log file (its JSON records), the run's train.log (text), the export
    task's log records and the prepare_data task's."""
    base, session = airflow_standalone.base, airflow_standalone.session
    workspace = tmp_path_factory.mktemp("task-log")
    conf = {**DEMO_TRAINING, "num_epochs": 2, "base_model": str(tiny_model), "workspace": str(workspace)}
    created = session.post(
        f"{base}/api/v2/dags/{DAG_ID}/dagRuns", json={"conf": conf, "logical_date": None}, timeout=30
    )
    assert created.status_code == 200, created.text
    run_id = created.json()["dag_run_id"]
    deadline, state = time.monotonic() + 900, None
    while time.monotonic() < deadline and state not in ("success", "failed"):
        time.sleep(3)
        state = session.get(f"{base}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", timeout=10).json()["state"]
    assert state == "success"
    logs = airflow_standalone.home / "logs" / f"dag_id={DAG_ID}"
    (task_log,) = [path for path in logs.glob("run_id=*/task_id=train/attempt=*.log") if run_id in str(path)]
    records = [json.loads(line) for line in task_log.read_text().splitlines() if line.strip()]
    (full_output, *_) = [r["event"] for r in records if str(r.get("event", "")).startswith(FULL_OUTPUT)]
    exported, prepared = (task_records(logs, run_id, task_id) for task_id in ("export_model", "prepare_data"))
    return records, Path(full_output.removeprefix(FULL_OUTPUT)).read_text(), exported, prepared


def task_records(logs: Path, run_id: str, task_id: str) -> list[dict]:
    (path,) = [p for p in logs.glob(f"run_id=*/task_id={task_id}/attempt=*.log") if run_id in str(p)]
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dataset_fragments() -> list[str]:
    """Pieces of the bundled dataset's conversations (read, never written): each user and assistant
    text of 20 characters or more, and every 40-character piece of the longer ones."""
    with bundled_dataset_path().open() as handle:
        texts = {
            message["content"]
            for line in handle
            if line.strip()
            for message in json.loads(line)["messages"]
            if message["role"] in ("user", "assistant") and len(message["content"]) >= 20
        }
    fragments = set()
    for text in texts:
        fragments.update([text] if len(text) <= 40 else (text[i : i + 40] for i in range(len(text) - 39)))
    return sorted(fragments)


def leaks(text: str, markers: tuple[str, ...] = DATA_PROCESSING_DUMPS) -> list[str]:
    return [marker for marker in markers if marker in text] + [f for f in dataset_fragments() if f in text]


def test_the_train_task_log_shows_the_run_and_no_training_data(train_logs):
    records, train_log, *_ = train_logs
    events = [str(record.get("event", "")) for record in records]
    assert leaks("\n".join(events)) == []
    training = [r for r in records if r.get("logger") == "airflow_provider_sft.training"]
    assert training and all(r["event"].startswith("[sft] ") and r["level"] == "info" for r in training)
    progress = [r["event"] for r in training if r["event"].startswith("[sft] step ")]
    assert len(progress) == 21, progress  # every 3rd of 60 steps, and the first
    assert progress[-1].startswith("[sft] step 60/60 epoch 2/2 loss ")
    assert [r["event"] for r in training if r["event"].startswith(FULL_OUTPUT)] == [training[0]["event"]] * 2
    assert training[-1]["event"] == training[0]["event"]  # named again at the end
    # prepare_data tokenized it before the job: the train task says so and does not process again
    assert any(
        e.startswith("[sft] data prepared before the job (fingerprint ")
        and e.endswith("not processed again: 235 samples")
        for e in events
    ), events
    assert not any(e.startswith(("[sft] data processing:", "[sft] processing the data here")) for e in events)
    assert not any("\r" in e or "it/s]" in e or "examples/s]" in e for e in events)  # no progress bar
    shown = [r["event"] for r in training if not r["event"].startswith(FULL_OUTPUT)]
    assert shown and set(shown) <= set(train_log.splitlines())  # the task log shows lines of the full output
    (summary,) = [e for e in events if e.startswith("[sft] summary: ")]
    assert summary.startswith("[sft] summary: 60 steps, 2 epochs, final loss ") and "(last step " in summary
    assert not any("fsdp_sharding_strategy" in e for e in events)  # the default is no choice to remark on


def test_the_export_task_says_the_export_once_and_the_metrics_as_a_sentence(train_logs):
    _, _, exported, _ = train_logs
    events = [str(record.get("event", "")) for record in exported if record.get("level") != "debug"]
    assert len([e for e in events if "final_model" in e]) == 1, events
    assert any("metrics.json: summary: 60 steps, 2 epochs, final loss " in e for e in events)
    assert not any("{'final_loss'" in e for e in events)


def test_the_prepare_task_reports_the_data_in_one_line_and_no_training_data(train_logs):
    *_, prepared = train_logs
    events = [str(record.get("event", "")) for record in prepared]
    assert leaks("\n".join(events)) == []
    (report,) = [e for e in events if e.startswith("Data report (fingerprint ")]
    assert "): 235/235 samples kept, 0 dropped (0 under 20 tokens, 0 at or over max_seq_len=" in report
    assert "optimizer step(s) per epoch x 2 = " in report


def test_train_log_has_the_full_output_but_no_training_data(train_logs):
    _, train_log, *_ = train_logs
    assert "is reused, not processed again: 235 samples" in train_log
    assert "[sft] step 60/60 epoch 2/2 loss " in train_log
    assert leaks(train_log, markers=("Original Input", "ex sample", "<|MASK|>")) == []

"""validation_split through real Airflow (`airflow dags test`, the example DAG, the local backend)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.demo import DEMO_TRAINING, EXAMPLE_DAGS, run_pipeline

pytestmark = pytest.mark.slow


def test_a_split_without_a_frequency_fails_the_run_at_validate_naming_it(tmp_path):
    workspace = tmp_path / "ws"
    conf = {"validation_split": 0.1, "workspace": str(workspace), "resource_gpu_per_worker": 0}
    with pytest.raises(SystemExit):
        run_pipeline(workspace, EXAMPLE_DAGS, conf, echo=False)
    text = (workspace / "dags-test.log").read_text()
    assert "validation_frequency: is required with validation_split=0.1" in text
    assert not (workspace / "runs").exists()  # nothing resolved, trained or written


def test_a_run_with_a_validation_split_reports_its_validation_loss(tiny_model, tmp_path):
    """The trigger's conf reaches the CPU loop; metrics.json, the XComs and the chart carry the loss."""
    workspace = tmp_path / "ws"
    conf = {
        "base_model": str(tiny_model),
        "workspace": str(workspace),
        **DEMO_TRAINING,
        "num_epochs": 1,
        "effective_batch_size": 16,
        "validation_split": 0.1,
        "validation_frequency": 5,
    }
    log = run_pipeline(workspace, EXAMPLE_DAGS, conf, echo=False)
    text = log.read_text()
    assert "validation at step 5: loss" in text  # the training process's own line, in the task log
    run_dir = next(p for p in (workspace / c.RUNS_DIR).iterdir() if (p / c.METRICS_SUMMARY_FILE).exists())
    metrics = json.loads((run_dir / c.METRICS_SUMMARY_FILE).read_text())
    # 235 samples, 24 held out: ceil(211 / 16) = 14 steps, validated at 5, 10 and the end
    assert metrics["steps"] == 14 and [v["step"] for v in metrics["validation"]] == [5, 10, 14]
    assert metrics["validation_step"] == 14 and metrics["best_validation_step"] in (5, 10, 14)
    with sqlite3.connect(workspace / "airflow" / "airflow.db") as db:
        (value,) = db.execute(
            "SELECT value FROM xcom WHERE task_id = 'export_model' AND key = 'validation'"
        ).fetchone()
    assert json.loads(value) == metrics["validation"]
    html = (workspace / c.RUNS_DIR / run_dir.name / c.LOSS_CHART_FILE).read_text()
    assert '"name":"validation loss"' in html and '"name":"best validation loss' in html
    assert f"validation loss {metrics['validation_loss']:.4f}" in text  # the export's summary line
    with sqlite3.connect(workspace / "airflow" / "airflow.db") as db:
        (extra,) = db.execute("SELECT extra FROM asset_event").fetchone()
    extra = json.loads(extra)  # the model's asset event carries the validation loss where there is one
    assert extra["validation_loss"] == metrics["validation_loss"] is not None
    assert extra["best_validation_loss"] == metrics["best_validation_loss"]

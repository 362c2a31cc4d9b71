"""The export task's log: the export said once, the metrics as a sentence, not a dict."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.operators.export import ExportModelOperator
from tests.unit.core.results.test_export import write_checkpoint


def test_the_export_is_logged_once_and_the_metrics_read_as_a_summary(tmp_path, capsys, caplog):
    run_dir = tmp_path / c.RUNS_DIR / "manual-20261205-090604-sft-abc"
    write_checkpoint(run_dir / c.HF_FORMAT_DIR / "samples_80")
    with (run_dir / c.METRICS_FILE).open("w") as metrics:
        for step in range(1, 11):
            metrics.write(json.dumps({"step": step, "epoch": 0, "avg_loss": 4.0 / step, "lr": 1e-4}) + "\n")
    op = ExportModelOperator(
        task_id="export_model", training_output_dir=str(run_dir), workspace=str(tmp_path)
    )
    context = {"ti": SimpleNamespace(dag_id="d", task_id="export_model", map_index=-1), "run_id": "r"}
    with caplog.at_level(logging.DEBUG):
        result = op.execute(context)
    # The operator's logger writes through Airflow's structlog (stdout here); the core's, logging.
    shown = [line for line in capsys.readouterr().out.splitlines() if "[info" in line or "[warn" in line]
    shown += [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len([line for line in shown if "final_model" in line]) == 1, shown  # the step's one line
    (summary,) = [line for line in shown if "summary:" in line]
    assert f"{result['metrics_path']}: summary: 10 steps, 1 epochs, final loss " in summary
    assert not any("{" in line for line in shown)  # no raw dict

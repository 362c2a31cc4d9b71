"""Two DAG runs at once in one workspace, with different datasets: neither sees the other's files.

Two `airflow dags test` processes (each its own metadata DB) share the workspace, as two active
runs of one DAG share it on a real deployment.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.sample_data import bundled_dataset_path
from airflow_provider_sft.demo import DEMO_TRAINING, EXAMPLE_DAGS, run_pipeline

pytestmark = pytest.mark.slow


def xcoms(db: Path) -> dict[tuple[str, str], object]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT task_id, key, value FROM xcom").fetchall()
    return {(task, key): json.loads(v) if isinstance(v, str) else v for task, key, v in rows}


def test_concurrent_runs_train_on_their_own_data_and_keep_their_own_outputs(tiny_model, tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    small = workspace / "small.jsonl"
    small.write_text("".join(bundled_dataset_path().read_text().splitlines(keepends=True)[:40]))
    runs = {"a": "bundled", "b": str(small)}
    errors: list[BaseException] = []

    def trigger(key: str) -> None:
        home = tmp_path / f"airflow-{key}"
        env = {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        }
        conf = {**DEMO_TRAINING, "num_epochs": 1, "base_model": str(tiny_model), "workspace": str(workspace)}
        try:
            run_pipeline(home, EXAMPLE_DAGS, {**conf, "dataset": runs[key]}, echo=False, extra_env=env)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=trigger, args=(key,)) for key in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(900)
    assert not errors, errors

    a, b = (xcoms(tmp_path / f"airflow-{key}" / "airflow.db") for key in runs)
    assert (a[("resolve_dataset", "records")], b[("resolve_dataset", "records")]) == (235, 40)
    for run, records in ((a, 235), (b, 40)):
        # trained on its own data: its dataset, and as many steps as its records make
        assert run[("train", "training_job")]["name"] in run[("train", "output_dir")]
        assert run[("export_model", "metrics")]["steps"] == -(
            -records // DEMO_TRAINING["effective_batch_size"]
        )
        model = Path(run[("export_model", "model_path")])
        assert model.parent == Path(run[("train", "output_dir")]) and (model / "model.safetensors").exists()
        chart = Path(run[("report", "chart_path")])
        assert chart.exists() and chart.parent.name == Path(run[("train", "output_dir")]).name
    assert a[("resolve_dataset", "path")] != b[("resolve_dataset", "path")]
    for run in (a, b):  # one DAG run, one directory: its dataset beside its training
        assert Path(run[("resolve_dataset", "path")]).parent.parent == Path(run[("train", "output_dir")])
    assert a[("export_model", "model_path")] != b[("export_model", "model_path")]
    assert json.loads((workspace / c.LATEST_FILE).read_text())["model_path"] in (
        a[("export_model", "model_path")],
        b[("export_model", "model_path")],
    )
    # after the export only the model, metrics and log remain of each run
    for run in (a, b):
        left = sorted(
            p.name for p in Path(run[("train", "output_dir")]).iterdir() if not p.name.startswith(".")
        )
        assert c.FULL_STATE_DIR not in left and c.HF_FORMAT_DIR not in left and "data" not in left
        assert c.FINAL_MODEL_DIR in left and c.METRICS_SUMMARY_FILE in left

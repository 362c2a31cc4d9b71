"""A clone's top-level ``dags/`` is an Airflow DAGs folder as it is: ``AIRFLOW__CORE__DAGS_FOLDER=dags``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_sft.demo import demo_environment
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_airflow_dags_list_finds_the_example_dags_in_the_top_level_dags_folder(tmp_path):
    env = {**demo_environment(tmp_path, REPO_ROOT / "dags"), "AIRFLOW__CORE__DAGS_FOLDER": "dags"}
    airflow = [sys.executable, "-m", "airflow"]
    for command in (["db", "migrate"], ["dags", "reserialize"]):  # what the DAG processor does
        subprocess.run(
            [*airflow, *command], env=env, cwd=REPO_ROOT, check=True, capture_output=True, timeout=300
        )
    listed = subprocess.run(
        [*airflow, "dags", "list", "-o", "json"],
        env=env,
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    table = listed.stdout.splitlines()[-1]  # after Airflow's own warnings (graphviz)
    dags = {dag["dag_id"]: dag for dag in json.loads(table)}
    assert sorted(dags) == ["sft_evaluate", "sft_pipeline"]
    assert Path(dags["sft_pipeline"]["fileloc"]) == Path("dags/sft_pipeline.py")
    assert Path(dags["sft_evaluate"]["fileloc"]) == Path("dags/sft_evaluate.py")

"""Bad input stops the example DAG at its first task, naming every field, and touches nothing."""

from __future__ import annotations

import pytest

from airflow_provider_sft.demo import run_pipeline
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_unknown_keys_and_bad_values_fail_the_run_before_any_work(tmp_path):
    workspace = tmp_path / "ws"
    conf = {
        "num_epoch": 3,  # a typo: would silently train with the default
        "resource_cpu_per_worker": "abc",
        "workspace": str(workspace),
        "resource_gpu_per_worker": 0,
    }
    with pytest.raises(SystemExit):
        run_pipeline(workspace, REPO_ROOT / "dags", conf, echo=False)
    text = (workspace / "dags-test.log").read_text()
    assert "num_epoch: unknown parameter; did you mean 'num_epochs'?" in text
    assert "resource_cpu_per_worker: must be a Kubernetes quantity" in text
    assert "task_id=resolve_dataset" not in text or "state=success" not in text
    assert not (workspace / "runs").exists()  # nothing was resolved, trained or written
    assert "XCom not found" not in text

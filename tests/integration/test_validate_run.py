"""Bad input stops the example DAG at its first task, naming every field, and touches nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_sft.demo import EXAMPLE_DAGS, run_pipeline

pytestmark = pytest.mark.slow


def test_unknown_keys_and_bad_values_fail_the_run_before_any_work(tmp_path):
    workspace = tmp_path / "ws"
    secret = "tok-3f9a1c77e2"
    conf = {
        "num_epoch": 3,  # a typo: would silently train with the default
        "max_seq_len": 4096,
        "max_tokens_per_gpu": 1024,  # a rule across fields: the schema cannot hold it
        "envs": f"MY_API_TOKEN={secret},NCCL_DEBUG=INFO",
        "workspace": str(workspace),
        "resource_gpu_per_worker": 0,
    }
    with pytest.raises(SystemExit):
        run_pipeline(workspace, EXAMPLE_DAGS, conf, echo=False)
    text = (workspace / "dags-test.log").read_text()
    assert "num_epoch: unknown parameter; did you mean 'num_epochs'?" in text
    assert "max_tokens_per_gpu" in text and "max_seq_len" in text
    assert "task_id=resolve_dataset" not in text or "state=success" not in text
    assert not (workspace / "runs").exists()  # nothing was resolved, trained or written
    assert "XCom not found" not in text
    # The secret-looking env value is masked in the log and in Rendered Templates (the DB).
    assert secret not in text
    rendered = rendered_fields(workspace / "airflow" / "airflow.db", "validate")
    assert "NCCL_DEBUG=INFO" in rendered and "MY_API_TOKEN=***" in rendered and secret not in rendered


def test_a_value_the_form_schema_refuses_fails_before_the_run_exists(tmp_path):
    workspace = tmp_path / "ws"
    conf = {"resource_memory_per_worker": "64GB", "workspace": str(workspace)}
    with pytest.raises(SystemExit):
        run_pipeline(workspace, EXAMPLE_DAGS, conf, echo=False)
    text = (workspace / "dags-test.log").read_text()
    assert "resource_memory_per_worker" in text and "'64GB' does not match" in text
    assert "task_id=validate" not in text  # no task ran
    assert not (workspace / "runs").exists()


def test_a_bad_envs_is_refused_by_the_first_task_without_printing_it(tmp_path):
    """The form has no rule for envs: Airflow's refusal would print the value, a token perhaps."""
    workspace = tmp_path / "ws"
    secret = "hf_PastedAlone9d2e"  # a token pasted without its name
    conf = {"envs": f"NCCL_DEBUG=INFO,{secret}", "workspace": str(workspace), "resource_gpu_per_worker": 0}
    with pytest.raises(SystemExit):
        run_pipeline(workspace, EXAMPLE_DAGS, conf, echo=False)
    text = (workspace / "dags-test.log").read_text()
    assert "envs: item 2 is not KEY=VALUE" in text and secret not in text
    assert not (workspace / "runs").exists()


def rendered_fields(database, task_id: str) -> str:
    import sqlite3

    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT rendered_fields FROM rendered_task_instance_fields WHERE task_id = ?", (task_id,)
        ).fetchall()
    assert rows, f"no Rendered Templates stored for {task_id}"
    return " ".join(str(row[0]) for row in rows)


@pytest.mark.parametrize("pull_secret", ["not-json-hunter2", '{"hunter2": 1}'], ids=["not-json", "no-auths"])
def test_an_unusable_oci_pull_secret_fails_the_run_at_validate_naming_the_variable(tmp_path, pull_secret):
    """Else it becomes a dockerconfigjson Secret the API server refuses (422) once the dataset is resolved."""
    workspace = tmp_path / "ws"
    conf = {"workspace": str(workspace), "backend": "kubernetes", "pvc_name": "sft-workspace"}
    extra_env = {"OCI_PULL_SECRET_MODEL_DOWNLOAD": pull_secret}
    with pytest.raises(SystemExit):
        run_pipeline(workspace, EXAMPLE_DAGS, conf, echo=False, extra_env=extra_env)
    text = (workspace / "dags-test.log").read_text()
    assert "OCI_PULL_SECRET_MODEL_DOWNLOAD: " in text and "task_id=validate" in text
    assert "hunter2" not in text
    assert not (workspace / "runs").exists()  # nothing was resolved or submitted


def test_a_system_workspace_fails_the_run_at_validate_and_nothing_is_created(tmp_path):
    workspace = tmp_path / "ws"
    before = sorted(p.name for p in Path("/").iterdir())
    with pytest.raises(SystemExit):
        run_pipeline(workspace, EXAMPLE_DAGS, {"workspace": "/", "resource_gpu_per_worker": 0}, echo=False)
    text = (workspace / "dags-test.log").read_text()
    assert "workspace: '/' is the filesystem root, a system directory or a home root: refused" in text
    assert "task_id=resolve_dataset" not in text or "state=success" not in text
    assert sorted(p.name for p in Path("/").iterdir()) == before  # no /runs, no /dataset

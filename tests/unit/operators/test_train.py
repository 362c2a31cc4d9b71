"""SFTTrainOperator: its parameters are the seed's, validation happens before anything starts."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from airflow_provider_sft.core.errors import DatasetError, InvalidParameterError
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.operators.train import SFTTrainOperator


class RecordingTI(SimpleNamespace):
    """Stands in for the task instance in the context: identifiers + xcom_push recording."""

    def xcom_push(self, key, value):
        self.pushed[key] = value


def context():
    ti = RecordingTI(dag_id="dag", task_id="train", map_index=-1, pushed={})
    return {"ti": ti, "run_id": "manual__1"}


def test_operator_takes_every_training_parameter_and_templates_it():
    signature = inspect.signature(SFTTrainOperator.__init__).parameters
    for name in SFTParams.model_fields:
        assert name in signature, name
        assert signature[name].default is None  # None = the seed's default
        assert name in SFTTrainOperator.template_fields
    assert {"dataset_path", "workspace", "backend", "namespace", "runtime_name", "pvc_name", "resume"} <= set(
        SFTTrainOperator.template_fields
    )


def test_rendered_strings_are_validated_into_params(tmp_path):
    op = SFTTrainOperator(
        task_id="t", dataset_path="d", workspace=str(tmp_path), learning_rate="1e-4", envs="A=1"
    )
    params = op.training_params()
    assert params.learning_rate == 1e-4 and params.envs == {"A": "1"}
    assert params.effective_batch_size == 128


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        pytest.param(
            {"resource_cpu_per_worker": "abc"}, InvalidParameterError, "resource_cpu_per_worker", id="cpu"
        ),
        pytest.param({"envs": "K"}, InvalidParameterError, "envs", id="envs"),
        pytest.param(
            {"fsdp_sharding_strategy": "ALL"}, InvalidParameterError, "fsdp_sharding_strategy", id="fsdp"
        ),
        pytest.param({"resource_gpu_per_worker": 1}, InvalidParameterError, "0 CUDA device", id="gpu-on-cpu"),
        pytest.param({"dataset_path": "/nonexistent.jsonl"}, DatasetError, "does not exist", id="dataset"),
        pytest.param({"backend": "slurm"}, InvalidParameterError, "backend: must be one of", id="backend"),
        pytest.param(
            {"resume": "always"}, InvalidParameterError, "resume: must be one of 'auto', 'never'", id="resume"
        ),
    ],
)
def test_bad_input_fails_before_anything_starts(tmp_path, kwargs, error, message):
    values = {"dataset_path": str(tmp_path / "d.jsonl"), "resource_gpu_per_worker": 0, **kwargs}
    (tmp_path / "d.jsonl").write_text("{}\n")
    op = SFTTrainOperator(task_id="t", workspace=str(tmp_path / "ws"), **values)
    ctx = context()
    with pytest.raises(error, match=message) as info:
        op.execute(ctx)
    if error is InvalidParameterError:
        from airflow_provider_sft.compat import AirflowFailException

        assert isinstance(info.value, AirflowFailException)  # never retried: a retry cannot fix it
    assert not (tmp_path / "ws").exists()  # no run directory, no process
    assert ctx["ti"].pushed == {}


@pytest.mark.parametrize("name", ["../..", "/etc", "runs/x", "A" * 10, "a" * 49])
def test_a_run_name_that_is_not_a_dns_label_is_refused(tmp_path, name):
    (tmp_path / "d.jsonl").write_text("{}\n")
    op = SFTTrainOperator(
        task_id="t",
        workspace=str(tmp_path / "ws"),
        dataset_path=str(tmp_path / "d.jsonl"),
        resource_gpu_per_worker=0,
        run_name=name,
    )
    with pytest.raises(InvalidParameterError, match="run_name"):
        op.execute(context())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]  # nothing created or removed


@pytest.mark.parametrize("workspace", ["/", "/etc", "/home"])
def test_a_system_workspace_is_refused_by_the_train_task_itself(tmp_path, workspace):
    """A DAG without the validate task gets the same confinement: no ``/runs`` is created."""
    (tmp_path / "d.jsonl").write_text("{}\n")
    before = sorted(os.listdir(workspace))
    op = SFTTrainOperator(
        task_id="t", workspace=workspace, dataset_path=str(tmp_path / "d.jsonl"), resource_gpu_per_worker=0
    )
    with pytest.raises(InvalidParameterError, match=rf"workspace: '{workspace}' .*refused"):
        op.execute(context())
    assert sorted(os.listdir(workspace)) == before


def test_run_name_is_stable_across_retries(tmp_path):
    op = SFTTrainOperator(task_id="t", dataset_path="d", workspace=str(tmp_path))
    first, second = op.build_run(context()), op.build_run(context())
    assert first.name == second.name
    assert Path(first.output_dir).parent == tmp_path / "runs"


def test_console_link_points_at_the_training_job(monkeypatch):
    from airflow_provider_sft import links

    # As the train task pushed it (this version's handle, an earlier version's: the same shape).
    job = {"backend": "kubernetes", "name": "sft-run-1", "output_dir": "/workspace/runs/sft-run-1"}
    job["namespace"] = "ml"
    # XCom.get_value stands in for the metadata database the link reads in a real webserver.
    monkeypatch.setattr(
        links.XCom, "get_value", staticmethod(lambda ti_key, key: job if key == "training_job" else None)
    )
    op = SFTTrainOperator(
        task_id="t",
        dataset_path="d",
        workspace="/w",
        console_url_template="https://console/ns/{namespace}/trainjobs/{name}",
    )
    assert links.TrainingJobConsoleLink.name == "Training job"  # a TrainJob or a PyTorchJob
    assert (
        links.TrainingJobConsoleLink().get_link(op, ti_key=None)
        == "https://console/ns/ml/trainjobs/sft-run-1"
    )
    job.update(backend="local", pid=1234)  # a local process has no namespace: no cluster job to show
    del job["namespace"]
    assert links.TrainingJobConsoleLink().get_link(op, ti_key=None) == ""


def test_training_results_link_opens_the_plugin_tab_over_http_once_there_are_results(monkeypatch):
    from airflow.models.taskinstancekey import TaskInstanceKey

    from airflow_provider_sft import links
    from airflow_provider_sft.operators.export import LossChartOperator

    results = {}
    monkeypatch.setattr(links.XCom, "get_value", staticmethod(lambda ti_key, key: results.get(key)))
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/")
    op = LossChartOperator(task_id="report", training_output_dir="/ws/runs/r", workspace="/ws")
    key = TaskInstanceKey("sft_pipeline", "report", "manual__2026-12-02T00:00:00+00:00", 1, -1)
    assert links.TrainingResultsLink().get_link(op, ti_key=key) == ""  # nothing to show yet
    results["return_value"] = {"chart_path": "/ws/runs/r/loss_chart.html"}
    assert links.TrainingResultsLink().get_link(op, ti_key=key) == (
        "https://airflow.example.com/dags/sft_pipeline/runs/manual__2026-12-02T00%3A00%3A00%2B00%3A00"
        "/tasks/report/plugin/sft-results"
    )
    mapped = TaskInstanceKey("sft_pipeline", "train", "r1", 1, 3)
    assert (
        links.TrainingResultsLink()
        .get_link(op, ti_key=mapped)
        .endswith("/tasks/train/mapped/3/plugin/sft-results")
    )


def test_no_console_link_means_no_xcom_lookup(monkeypatch):
    """A failed train task has no training_job XCom: without a console link nothing asks for it."""
    from airflow_provider_sft import links

    def fail(**_kwargs):
        raise AssertionError("XCom looked up")

    monkeypatch.setattr(links.XCom, "get_value", staticmethod(fail))
    op = SFTTrainOperator(task_id="t", dataset_path="d", workspace="/ws")
    assert links.TrainingJobConsoleLink().get_link(op, ti_key=None) == ""


def test_hf_connection_token_reaches_the_local_backend_environment(monkeypatch, tmp_path):
    import json

    monkeypatch.setenv(
        "AIRFLOW_CONN_HF", json.dumps({"conn_type": "generic", "password": "hf_from_connection"})
    )
    monkeypatch.delenv("HF_TOKEN", raising=False)
    op = SFTTrainOperator(task_id="t", dataset_path="d", workspace=str(tmp_path), hf_conn_id="hf")
    backend = op._backend_for(context())
    assert backend.secret_env == {"HF_TOKEN": "hf_from_connection"}


def test_deferrable_on_the_local_backend_says_it_keeps_the_worker_slot(monkeypatch, tmp_path, capsys):
    """``deferrable`` often comes from ``[operators] default_deferrable``, set for every operator:
    refusing it would fail every local run; it is ignored, and the log says so, naming the field."""
    from airflow_provider_sft.core.backends import JobHandle, JobResult, JobStatus
    from airflow_provider_sft.core.backends.local import LocalProcessBackend

    calls = []

    def submit(self, run, *, timeout_seconds=None):
        calls.append("submit")
        return JobHandle(self.name, run.name, run.output_dir)

    def wait(self, handle, *, on_log, timeout_seconds=None, on_progress=None):
        calls.append("wait")  # the blocking wait, in this worker
        return JobResult(JobStatus.FAILED, "stopped here")

    monkeypatch.setattr(LocalProcessBackend, "submit", submit)
    monkeypatch.setattr(LocalProcessBackend, "wait", wait)
    op = SFTTrainOperator(task_id="t", dataset_path="d.jsonl", workspace=str(tmp_path), deferrable=True)
    with pytest.raises(Exception, match="stopped here"):
        op.execute(context())
    assert calls == ["submit", "wait"]
    logged = "".join(capsys.readouterr())  # the task logger (structlog) writes to the console here
    assert "deferrable=True has no effect on the local backend" in logged
    assert "keeps its worker slot" in logged


def test_start_timeout_seconds_reaches_the_kubernetes_config_and_the_old_name_still_works_with_a_warning(
    tmp_path,
):
    from airflow.exceptions import AirflowProviderDeprecationWarning

    ws = str(tmp_path)

    k8s = {"backend": "kubernetes", "namespace": "ns", "pvc_name": "ws"}
    op = SFTTrainOperator(task_id="t", dataset_path="d", workspace=ws, start_timeout_seconds=600, **k8s)
    assert "start_timeout_seconds" in SFTTrainOperator.template_fields
    assert op.backend_config().start_timeout_seconds == 600
    with pytest.warns(AirflowProviderDeprecationWarning, match="start_timeout is deprecated"):
        old = SFTTrainOperator(task_id="t", dataset_path="d", workspace=ws, start_timeout="600", **k8s)
    assert old.backend_config().start_timeout_seconds == 600
    with pytest.raises(
        InvalidParameterError, match="start_timeout: is the old name of start_timeout_seconds"
    ):
        SFTTrainOperator(
            task_id="t", dataset_path="d", workspace=ws, start_timeout=60, start_timeout_seconds=600
        )


def test_resume_reaches_the_run_auto_by_default(tmp_path):
    """A retry or a preempted job continues unless the DAG says never (see DESIGN.md)."""
    op = SFTTrainOperator(task_id="t", dataset_path="d", workspace=str(tmp_path), resource_gpu_per_worker=0)
    assert op.build_run(context()).resume == "auto"
    op.resume = "never"  # as rendered from "{{ params.resume }}"
    assert op.build_run(context()).to_json_dict()["resume"] == "never"

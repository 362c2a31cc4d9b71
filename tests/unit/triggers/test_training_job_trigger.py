"""TrainingJobTrigger without a cluster: its serialized form, and an unreachable server on a fake clock.

The trigger against the real API server is in tests/integration/test_trainjob_trigger.py.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

from airflow_provider_sft.triggers.training_job import TrainingJobTrigger
from tests.fakes.clock import FakeClock


def job(namespace, name="trig-job", kind="TrainJob"):
    return {
        "backend": "kubernetes",
        "name": name,
        "output_dir": f"/workspace/runs/{name}",
        "namespace": namespace,
        "kind": kind,
    }


def test_serialize_round_trip():
    kwargs = {
        "job": job("ns", "n"),
        "kubernetes_conn_id": "k",
        "deadline": "2026-11-25T21:00:00+00:00",
        "start_deadline": "2026-11-25T20:10:00+00:00",
        "start_timeout_seconds": 600.0,
        "delete_on_kill": False,
    }
    classpath, serialized = TrainingJobTrigger(**kwargs).serialize()
    assert classpath == "airflow_provider_sft.triggers.training_job.TrainingJobTrigger"
    assert serialized == kwargs
    assert TrainingJobTrigger(**serialized).serialize() == (classpath, kwargs)


def test_a_trigger_serialized_before_start_timeout_said_its_unit_resumes_with_it():
    old = {"job": job("ns", "n"), "kubernetes_conn_id": "k", "start_timeout": 600.0}
    trig = TrainingJobTrigger(**old)
    assert trig.start_timeout_seconds == 600.0
    assert trig.serialize()[1]["start_timeout_seconds"] == 600.0
    assert "start_timeout" not in trig.serialize()[1]


def test_an_unreachable_cluster_is_waited_out_until_the_deadline(tmp_path, monkeypatch):
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "x", "user": {}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
    }
    (tmp_path / "kc").write_text(json.dumps(kubeconfig))
    monkeypatch.setenv(
        "AIRFLOW_CONN_DOWN",
        json.dumps({"conn_type": "kubernetes", "extra": {"kube_config_path": str(tmp_path / "kc")}}),
    )
    clock = FakeClock()  # backoff without waiting: each sleep moves this clock on instead
    deadline = (clock.now() + timedelta(seconds=30)).isoformat()
    trig = TrainingJobTrigger(job=job("ns", "x"), kubernetes_conn_id="down", deadline=deadline, clock=clock)
    event = asyncio.run(asyncio.wait_for(trig.run().__anext__(), 30)).payload
    assert event["status"] == "timeout"  # an unreachable server is waited out until the deadline


def logged(capsys, caplog) -> str:
    """What the task's or the trigger's logger said: structlog writes to the console, logging to caplog."""
    return "".join(capsys.readouterr()) + "\n".join(r.getMessage() for r in caplog.records)


def test_below_airflow_3_3_the_progress_is_not_stored_and_one_line_says_why(monkeypatch, caplog, capsys):
    """A trigger cannot store an XCom before Airflow 3.3 (no ``XCom.aset``): one line, then nothing."""
    from types import SimpleNamespace

    from airflow_provider_sft.triggers import training_job

    monkeypatch.setattr(training_job, "AIRFLOW_V_3_3_PLUS", False)
    trigger = TrainingJobTrigger(job=job("ns"), kubernetes_conn_id="k")
    trigger.task_instance = SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=-1)
    caplog.set_level("INFO")

    async def publish_twice():
        await trigger._publish({"percent": 10}, None)
        await trigger._publish({"percent": 20}, None)

    asyncio.run(publish_twice())
    said = logged(capsys, caplog)
    assert said.count("Live progress in the Training results tab needs Airflow 3.3+") == 1
    assert "the progress lines are in this log" in said


def test_below_airflow_3_3_deferring_says_a_kill_leaves_the_job_running(
    monkeypatch, caplog, capsys, tmp_path
):
    import pytest

    from airflow_provider_sft import version_compat
    from airflow_provider_sft.compat import TaskDeferred
    from airflow_provider_sft.core.backends.base import JobHandle
    from airflow_provider_sft.operators.train import SFTTrainOperator

    op = SFTTrainOperator(task_id="t", workspace=str(tmp_path), dataset_path=str(tmp_path / "d.jsonl"))
    handle = JobHandle.from_dict(job("team-a", name="run-1"))
    for supported, warned in ((True, False), (False, True)):
        monkeypatch.setattr(version_compat, "AIRFLOW_V_3_3_PLUS", supported)
        caplog.clear()
        capsys.readouterr()
        with pytest.raises(TaskDeferred):
            op._defer(handle, 600)
        assert ("leaves TrainJob team-a/run-1 running" in logged(capsys, caplog)) is warned

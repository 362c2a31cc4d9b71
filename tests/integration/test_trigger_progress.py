"""The wait says a running job's progress, through the REAL API server with the upstream CRDs.

The trigger (deferred) and the worker's blocking wait, which share ``follow_job``; then a real
``airflow standalone`` whose triggerer writes the lines to the task log and stores the progress.

A TrainJob whose ``status.trainerStatus`` advances while it runs: written here through the API
server's ``/status`` subresource, as Kubeflow Trainer's status server writes what the pod pushes
(the v2.3.0 CRD's schema and CEL rule validate it). A PyTorchJob has no trainerStatus: its
rank-0 pod's ``step ...`` lines (served by the fake core API) are read instead.

Time runs 60 times faster for the trigger (:class:`FastClock`), so the 30 s floor between two
lines is half a second here and a run of 20 readings takes seconds, not ten minutes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from airflow_provider_sft.core.results.live_progress import (
    PROGRESS_XCOM_KEY,
    SOURCE_POD_LOG,
    SOURCE_TRAINER_STATUS,
)
from airflow_provider_sft.demo import DAG_ID, DEMO_TRAINING
from tests.integration.test_trainjob_trigger import connection, submit, trigger  # noqa: F401 (fixture)

SPEED = 60.0  # clock seconds per real second
READINGS = 20  # 5% each
READING_SECONDS = 0.6  # real seconds between two readings: 36 clock seconds, past the 30 s floor
LINE = re.compile(r"^progress (\d+)%: step (\d+)/(\d+), .* \(from (.+)\)$")


class FastClock:
    """Real time, ``SPEED`` times faster: sleeps are shorter, readings further apart."""

    def __init__(self) -> None:
        self.start, self.wall = time.monotonic(), datetime.now(timezone.utc)

    def monotonic(self) -> float:
        return (time.monotonic() - self.start) * SPEED

    def now(self) -> datetime:
        return self.wall + timedelta(seconds=self.monotonic())

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds / SPEED)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / SPEED)


def write_trainer_status(cluster, namespace: str, name: str, reading: int) -> None:
    """The smallest trainerStatus writer (test-only): what the status server applies for a push."""
    step = reading * 10
    cluster.custom().patch_namespaced_custom_object_status(
        "trainer.kubeflow.org",
        "v1alpha1",
        namespace,
        "trainjobs",
        name,
        {
            "status": {
                "trainerStatus": {
                    "progressPercentage": 100 * reading // READINGS,
                    "estimatedRemainingSeconds": (READINGS - reading) * 36,
                    "metrics": [
                        {"name": "step", "value": str(step)},
                        {"name": "total_steps", "value": str(READINGS * 10)},
                        {"name": "loss", "value": format(2.0 - reading / READINGS, ".6g")},
                        {"name": "tokens_per_second", "value": "812.5"},
                    ],
                    "lastUpdatedTime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            }
        },
    )


def append_step_line(cluster, namespace: str, name: str, reading: int) -> None:
    """The rank-0 pod (a PyTorchJob's master) prints the next ``step ...`` line."""
    pod = cluster.pods[(namespace, f"{name}-master-0")]
    step, total = reading * 10, READINGS * 10
    pod["log"] += (
        f"[sft] step {step}/{total} epoch 1/1 loss {2.0 - reading / READINGS:.4f} lr 2e-05 "
        f"31.2 samples/s 812.5 tokens/s ETA {(READINGS - reading) * 36}s\n"
    )


class Lines(logging.Handler):
    """The trigger's log lines (the triggerer writes them to the task's log), each with its time."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((time.monotonic(), record.getMessage()))


def advance_job(cluster, namespace: str, kind: str, ended: dict[str, float]) -> None:
    """Run the job: its readings one by one while it runs, then its end (noted in ``ended``)."""
    time.sleep(0.3)
    cluster.drive(namespace, "trig-job", "running", kind=kind, log="[sft] training starts\n")
    for reading in range(1, READINGS + 1):
        time.sleep(READING_SECONDS)
        if kind == "TrainJob":
            write_trainer_status(cluster, namespace, "trig-job", reading)
        else:
            append_step_line(cluster, namespace, "trig-job", reading)
    time.sleep(READING_SECONDS)
    ended["at"] = time.monotonic()
    cluster.drive(namespace, "trig-job", "complete", reason="JobsCompleted", kind=kind)


def deferred_wait(cluster, namespace, connection, kind, lines: Lines) -> float:  # noqa: F811
    """The trigger, as the triggerer runs it, its log lines into ``lines``."""
    submit(cluster, namespace, kind=kind)
    trig = trigger(namespace, connection, kind, clock=FastClock())
    logger = logging.getLogger(f"test.trigger_progress.{namespace}")
    logger.setLevel(logging.INFO)
    logger.addHandler(lines)
    trig._log = logger  # LoggingMixin's logger: the one the triggerer routes to the task log
    ended: dict[str, float] = {}

    async def main():
        driver = asyncio.ensure_future(asyncio.to_thread(advance_job, cluster, namespace, kind, ended))
        event = await asyncio.wait_for(trig.run().__anext__(), 60)
        await driver
        return event.payload

    assert asyncio.run(main())["status"] == "success"
    return ended["at"]


def blocking_wait(cluster, namespace, connection, kind, lines: Lines) -> float:  # noqa: F811
    """The worker's blocking wait (``deferrable=False``), its progress lines into ``lines``."""
    from airflow_provider_sft.core.backends.kubernetes import KubernetesBackend, KubernetesConfig
    from airflow_provider_sft.core.results.live_progress import progress_text
    from tests.integration.test_kubernetes_backend import IMAGE

    handle = submit(cluster, namespace, kind=kind)
    image = {"image": IMAGE} if kind == "PyTorchJob" else {}
    backend = KubernetesBackend(
        config=KubernetesConfig.build(namespace=namespace, pvc_name="sft-workspace", job_kind=kind, **image),
        connect=cluster.connect,
        clock=FastClock(),
    )
    ended: dict[str, float] = {}
    driver = threading.Thread(target=advance_job, args=(cluster, namespace, kind, ended))
    driver.start()
    result = backend.wait(
        handle,
        on_log=lambda _line: None,
        on_progress=lambda tracker: lines.lines.append((time.monotonic(), progress_text(tracker.said))),
    )
    driver.join()
    assert result.succeeded, result
    return ended["at"]


@pytest.mark.parametrize("wait", [deferred_wait, blocking_wait], ids=["deferred", "blocking"])
@pytest.mark.parametrize(
    ("kind", "source"),
    [("TrainJob", SOURCE_TRAINER_STATUS), ("PyTorchJob", SOURCE_POD_LOG)],
    ids=["trainjob-trainerStatus", "pytorchjob-pod-log"],
)
def test_the_wait_says_progress_while_the_job_runs(cluster, namespace, connection, kind, source, wait):  # noqa: F811
    lines = Lines()
    ended = wait(cluster, namespace, connection, kind, lines)
    said = [(at, LINE.match(text)) for at, text in lines.lines if text.startswith("progress ")]
    assert said and all(match for _, match in said), [text for _, text in lines.lines]
    while_running = [match for at, match in said if at < ended]
    percents = [int(match[1]) for match in while_running]
    assert len(while_running) >= 10, [match[0] for _, match in said]
    assert percents == sorted(set(percents)) and percents[0] > 0  # in order, each higher than the last
    assert {match[4] for _, match in said} == {source}
    steps = [int(match[2]) for _, match in said]
    assert steps == sorted(steps) and steps[-1] == READINGS * 10  # the last reading is said at the end


@pytest.mark.slow
def test_a_real_triggerer_writes_the_lines_to_the_task_log_and_stores_the_progress(
    cluster, namespace, tiny_model, tmp_path
):
    """``airflow standalone`` runs the example DAG on Kubernetes, deferred: its triggerer's lines
    reach the train task's log (the ``.trigger.<id>.log`` beside the attempt's, which the UI
    merges), and the progress is stored as the task's XCom through the triggerer's own API."""
    from tests.integration.conftest import running_demo, wait_for_dag_run
    from tests.k8s import harness, standin

    if reason := standin.unavailable():
        pytest.skip(reason)
    pvc = cluster.kubelet.add_pvc("sft-workspace", tmp_path / "pvc")
    shutil.copytree(tiny_model, pvc / "models" / "tiny")
    for path in [pvc / "models", *(pvc / "models").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    cluster.auto_run(namespace, extra_env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    env = {"AIRFLOW_CONN_KUBERNETES_DEFAULT": harness.connection_uri(cluster.url, namespace)}
    (tmp_path / "airflow-side").mkdir()
    with running_demo(tmp_path / "airflow-side", env) as standalone:
        conf = {
            **DEMO_TRAINING,
            "num_epochs": 2,
            "backend": "kubernetes",
            "base_model": "/workspace/models/tiny",
            "workspace": str(tmp_path / "airflow-side" / "runs"),
            "pvc_name": "sft-workspace",
        }
        created = standalone.session.post(
            f"{standalone.base}/api/v2/dags/{DAG_ID}/dagRuns",
            json={"conf": conf, "logical_date": None},
            timeout=60,
        )
        assert created.status_code == 200, created.text
        run_id = created.json()["dag_run_id"]
        assert wait_for_dag_run(standalone, run_id, timeout=900) == "success"
        xcom = standalone.session.get(
            f"{standalone.base}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/train/xcomEntries/"
            f"{PROGRESS_XCOM_KEY}",
            params={"deserialize": True},
            timeout=60,
        )
        run_name = standalone.session.get(
            f"{standalone.base}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/train/xcomEntries/run_name",
            params={"deserialize": True},
            timeout=60,
        ).json()["value"]
        logs = standalone.home / "logs" / f"dag_id={DAG_ID}"
        files = [p for p in logs.glob("run_id=*/task_id=train/attempt=*.log*") if run_id in str(p)]
    trigger_logs = [p for p in files if ".trigger." in p.name]
    events = [
        str(json.loads(line).get("event", ""))
        for path in trigger_logs
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    said = [match for event in events if (match := LINE.match(event))]
    assert said and said[-1][1] == "100" and {m[4] for m in said} == {SOURCE_POD_LOG}, [p.name for p in files]
    assert xcom.ok, xcom.text
    value = xcom.json()["value"]
    value = json.loads(value) if isinstance(value, str) else value
    assert value["progress"]["percent"] == 100 and value["progress"]["source"] == SOURCE_POD_LOG
    assert len(value["curve"]["step"]) >= 1 and value["run_name"] == run_name

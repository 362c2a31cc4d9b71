"""A job never outlives its task: SIGTERM to a REAL ``airflow dags test`` process, mid-wait and mid-submit.

Airflow 3.3's task runner (``_run_task_and_map_outcome``) installs a SIGTERM handler in the task
process that calls the operator's ``on_kill`` in the main thread, wherever the task is: inside the
blocking wait's event loop, inside the submit, or (``airflow dags test`` runs a trigger in the task's
process, under ``asyncio.run``, with that handler still installed) inside the deferred wait. The
process here is a real ``airflow dags test`` of a one-task DAG against the real API server with the
upstream CRDs (fake core for the Secret and ConfigMap); afterwards nothing of the run is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_kubernetes_backend import IMAGE, trainjobs

pytestmark = pytest.mark.slow

DAG_ID = "sft_kill"
DAG = """
import os
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_sft.operators.train import SFTTrainOperator

with DAG("sft_kill", schedule=None, start_date=datetime(2026, 1, 1), catchup=False):
    SFTTrainOperator(
        task_id="train",
        backend="kubernetes",
        dataset_path="/workspace/d.jsonl",
        workspace="/workspace",
        pvc_name="sft-workspace",
        namespace=os.environ["SFT_KILL_NAMESPACE"],
        job_kind=os.environ["SFT_KILL_KIND"],
        image=os.environ.get("SFT_KILL_IMAGE") or None,
        deferrable=os.environ["SFT_KILL_DEFERRABLE"] == "1",
        retries=0,
    )
"""
TOKEN = "hf_KillTestToken42"  # makes the run's Secret


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    """A migrated Airflow home and a dags folder with the one-task DAG, shared by this module's runs."""
    root = tmp_path_factory.mktemp("kill")
    (root / "dags").mkdir()
    (root / "dags" / "sft_kill.py").write_text(DAG)
    env = airflow_env(root)
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True
    )
    return root


def airflow_env(root: Path, **extra: str) -> dict[str, str]:
    home = root / "airflow"
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "HF_TOKEN": TOKEN,
        "OMP_NUM_THREADS": "1",
        **extra,
    }


class DagsTest:
    """``airflow dags test sft_kill`` in its own session, its output in a file."""

    def __init__(self, root: Path, namespace: str, kind: str, deferrable: bool):
        self.log = root / f"{namespace}.log"
        env = airflow_env(
            root,
            SFT_KILL_NAMESPACE=namespace,
            SFT_KILL_KIND=kind,
            SFT_KILL_IMAGE=IMAGE if kind == "PyTorchJob" else "",
            SFT_KILL_DEFERRABLE="1" if deferrable else "0",
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "airflow", "dags", "test", DAG_ID],
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def until(self, check, what: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert self.process.poll() is None, f"exited before {what}:\n{self.text()[-5000:]}"
            assert time.monotonic() < deadline, f"no {what} in {timeout}s:\n{self.text()[-5000:]}"
            time.sleep(0.2)

    def terminate(self) -> None:
        """SIGTERM to the task's process (the one running it in-process), as a kill sends it."""
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 120) -> str:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"airflow dags test still running {timeout}s after SIGTERM:\n{self.text()[-5000:]}")
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.text()


def assert_nothing_left(cluster, namespace, kind, text):
    assert trainjobs(cluster, namespace, kind) == [], text[-5000:]
    assert cluster.configmaps_in(namespace) == [], text[-5000:]
    assert cluster.secrets_in(namespace) == [], text[-5000:]
    assert "cannot be called from a running event loop" not in text
    assert "Task killed: cancelling training run" in text


@pytest.mark.parametrize("deferrable", [False, True], ids=["sync", "deferrable"])
def test_sigterm_mid_wait_deletes_the_job_its_secret_and_configmap(
    cluster, namespace, k8s_connection, airflow_home, kind, deferrable
):
    run = DagsTest(airflow_home, namespace, kind, deferrable)
    run.until(lambda: trainjobs(cluster, namespace, kind), f"{kind} created")
    name = trainjobs(cluster, namespace, kind)[0]["metadata"]["name"]
    assert cluster.secrets_in(namespace) and cluster.configmaps_in(namespace)  # there is something to lose
    if deferrable:  # the trigger runs in the task's process, under its own asyncio.run
        run.until(lambda: "running trigger in line" in run.text(), "inline trigger")
        run.until(lambda: f"{kind} {namespace}/{name}: pending" in run.text(), "trigger watching")
    else:  # the blocking wait reports the job's state once it watches it
        run.until(lambda: f"{kind} {name}: pending" in run.text(), "blocking wait")
    time.sleep(1)
    run.terminate()
    text = run.wait()
    assert_nothing_left(cluster, namespace, kind, text)


def test_sigterm_mid_submit_deletes_what_the_submit_creates(
    cluster, namespace, k8s_connection, airflow_home, kind
):
    """The submit is held by a frozen API server (its first call hangs); the kill lands there. The
    submit creates the job once the server answers again: it must be deleted then, not left."""
    cluster.server.freeze()
    try:
        run = DagsTest(airflow_home, namespace, kind, deferrable=False)
        run.until(lambda: "on the kubernetes backend" in run.text(), "submit")
        time.sleep(2)  # inside the submit, on a call the frozen server does not answer
        run.terminate()
        time.sleep(2)
    finally:
        cluster.server.thaw()
    text = run.wait()
    assert_nothing_left(cluster, namespace, kind, text)
    assert "was killed; its" in text  # the task ended at the kill, not after a wait

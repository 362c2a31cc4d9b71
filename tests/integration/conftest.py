"""Fixtures: a real Kubernetes API server with the upstream Trainer CRDs, and a real Airflow.

Skipped with the reason when the server cannot be built. ``@pytest.mark.trainer("v2.1.0")``
picks the Trainer release whose CRDs a test runs against (default: the newest).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.k8s import harness
from tests.servers import MotoServer

NEWEST = "v2.3.0"


@pytest.fixture(scope="session")
def k8s_server():
    if not harness.available():
        pytest.skip(harness.UNAVAILABLE)
    server = harness.ApiServer().start()
    server.release = None
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_cluster(k8s_server):
    from tests.k8s.fake_core import FakeCluster

    cluster = FakeCluster(k8s_server).start()
    yield cluster
    cluster.stop()


def use_release(server, release: str) -> None:
    if server.release != release:
        harness.install_trainer(server, release)
        server.release = release


@pytest.fixture
def cluster(fake_cluster, request):
    """The fake cluster with the upstream CRDs of the Trainer release a test asks for."""
    marker = request.node.get_closest_marker("trainer")
    release = marker.args[0] if marker else NEWEST
    use_release(fake_cluster.server, release)
    fake_cluster.release = release
    return fake_cluster


@pytest.fixture(params=("TrainJob", "PyTorchJob"))
def kind(request):
    """Each kind of training job: they share one lifecycle, so its tests run for both."""
    return request.param


@pytest.fixture
def namespace():
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def k8s_connection(cluster, namespace, monkeypatch):
    """``kubernetes_default`` (a cncf ``kubernetes`` connection) pointing at the test cluster."""
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", harness.connection_uri(cluster.url, namespace))
    return "kubernetes_default"


@dataclass
class Standalone:
    """A running ``sft-demo --serve``: a real ``airflow standalone`` with the example DAG."""

    base: str
    session: requests.Session  # REST, with a bearer token of the admin user
    password: str
    home: Path
    workspace: Path
    process: subprocess.Popen  # the sft-demo process


@contextlib.contextmanager
def running_demo(workspace: Path, env: dict[str, str] | None = None, dags_folder: Path | None = None):
    """``sft-demo --serve`` on a free loopback port, up and with the example DAG parsed
    (from ``dags_folder`` when given: it must hold ``sft_pipeline.py``).

    Started in a session of its own, as from a terminal; ``.process`` is the demo. Stopped by
    process group on the way out (a test may have stopped it already).
    """
    port = harness.free_port()
    env = {
        **os.environ,
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "1",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    sft_demo = Path(sys.executable).parent / "sft-demo"
    log_path = workspace / "standalone.log"
    process = subprocess.Popen(
        [str(sft_demo), "--serve", "--port", str(port), "--workspace", str(workspace)]
        + (["--dags-folder", str(dags_folder)] if dags_folder else []),
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    home = workspace / "airflow"
    try:
        deadline = time.monotonic() + 240
        token = password = None
        while time.monotonic() < deadline and token is None:
            time.sleep(1)
            assert process.poll() is None, log_path.read_text()[-3000:]
            passwords = home / "simple_auth_manager_passwords.json.generated"
            if not passwords.exists():
                continue
            password = json.loads(passwords.read_text())["admin"]
            try:
                answer = requests.post(
                    f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=5
                )
            except requests.ConnectionError:
                continue
            if answer.status_code in (200, 201):
                token = answer.json()["access_token"]
        assert token and password, "airflow standalone did not come up: " + log_path.read_text()[-3000:]
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        while time.monotonic() < deadline:  # the DAG processor must have parsed the example DAG
            if session.get(f"{base}/api/v2/dags/sft_pipeline", timeout=5).status_code == 200:
                break
            time.sleep(1)
        assert session.patch(f"{base}/api/v2/dags/sft_pipeline", json={"is_paused": False}, timeout=10).ok
        yield Standalone(base, session, password, home, workspace, process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the demo stops all it started
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="session")
def airflow_standalone(tmp_path_factory):
    """``sft-demo --serve``: what the README's "run it yourself" starts.

    The example DAG's form defaults are the demo's (its tiny model, CPU settings), so *Trigger*
    with the defaults trains.
    """
    with running_demo(tmp_path_factory.mktemp("standalone")) as standalone:
        yield standalone


def wait_for_dag_run(standalone: Standalone, run_id: str, timeout: float = 600) -> str:
    """The final state of a DAG run of the example DAG."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        url = f"{standalone.base}/api/v2/dags/sft_pipeline/dagRuns/{run_id}"
        state = standalone.session.get(url, timeout=10).json()["state"]
        if state in ("success", "failed"):
            return state
        time.sleep(3)
    return str(state)


@pytest.fixture
def trainer_status(cluster):
    """The Trainer's ``TrainJobStatus`` feature gate on: the stand-in status server
    (tests/k8s/status_server.py) applies what pods push to the real API server, and the stand-in
    controller injects its URL, CA and a token into every TrainJob's trainer container."""
    from tests.k8s.status_server import StatusServer

    server = StatusServer(cluster.server, cluster.token_issuer()).start()
    cluster.trainer_status = server
    yield server
    cluster.trainer_status = None
    server.close()


@pytest.fixture(scope="module")
def s3():
    """moto's real S3 server, one per test module; each test makes its own bucket. (A module
    with preloaded data defines its own ``s3``.)"""
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def hub_client_online(monkeypatch):
    """The real ``huggingface_hub`` client as a publish uses it against the Hub stand-in: online
    (the suite runs offline), over LFS (the stand-in speaks no Xet), no token from the environment."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)

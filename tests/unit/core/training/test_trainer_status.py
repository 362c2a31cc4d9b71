"""The pod's pushes to ``status.trainerStatus``: the payload of the contract, and a reporter that never
gets in the training's way (a local HTTPS server with its own CA stands in for the status server;
tests/integration/test_trainer_status_standin.py has the one that writes to the real API server)."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from dataclasses import replace

import pytest

from airflow_provider_sft.core.training.progress import ProgressSnapshot
from airflow_provider_sft.core.training.trainer_status import (
    CA_CERT_ENV,
    TOKEN_ENV,
    URL_ENV,
    TrainerStatusReporter,
    trainer_status,
)
from tests.k8s.status_server import issue_certificates

SNAPSHOT = ProgressSnapshot(
    step=45,
    total_steps=180,
    epoch=1,
    num_epochs=6,
    samples_seen=355,
    total_samples=1410,
    loss=2.123456789,
    loss_smoothed=2.2,
    lr=0.002,
    grad_norm=0.5,
    samples_per_second=31.25,
    tokens_per_second=1712.3456,
    eta_seconds=33.5,
    validation_loss=None,
    at=1796529600.0,  # 2026-12-06T04:00:00Z
)


def test_the_payload_follows_the_contract():
    status = trainer_status(SNAPSHOT)
    assert status == {
        "progressPercentage": 25,  # floor(355 / 1410 * 100) = floor(25.18)
        "estimatedRemainingSeconds": 34,
        "metrics": [
            {"name": "step", "value": "45"},
            {"name": "total_steps", "value": "180"},
            {"name": "epoch", "value": "2"},  # 1-based
            {"name": "num_epochs", "value": "6"},
            {"name": "loss", "value": "2.12346"},
            {"name": "loss_smoothed", "value": "2.2"},
            {"name": "learning_rate", "value": "0.002"},
            {"name": "tokens_per_second", "value": "1712.35"},
            {"name": "samples_per_second", "value": "31.25"},
            {"name": "samples_seen", "value": "355"},
        ],  # no validation loss yet: left out
        "lastUpdatedTime": "2026-12-06T04:00:00Z",
    }
    validated = trainer_status(replace(SNAPSHOT, validation_loss=1.5, eta_seconds=None, total_samples=None))
    assert "progressPercentage" not in validated and "estimatedRemainingSeconds" not in validated
    assert validated["metrics"][-1] == {"name": "validation_loss", "value": "1.5"}
    done = trainer_status(SNAPSHOT, completed=True)
    assert (done["progressPercentage"], done["estimatedRemainingSeconds"]) == (100, 0)
    nothing = trainer_status(None, completed=True)
    assert set(nothing) == {"progressPercentage", "estimatedRemainingSeconds", "lastUpdatedTime"}


class Server:
    """An HTTPS endpoint that records each request; ``hold`` keeps it from answering until set."""

    def __init__(self, tmp_path, *, code: int = 200):
        self.certificates = issue_certificates(tmp_path / "tls", ("localhost",))
        self.requests: list[tuple[str, dict]] = []  # (Authorization header, body)
        self.hold = threading.Event()
        self.hold.set()
        self.arrived = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.headers.get("Authorization", ""), body))
                outer.arrived.set()
                outer.hold.wait(30)
                answer = json.dumps({"message": "metrics: Too many"} if code != 200 else body).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certificates.cert, self.certificates.key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.httpd.server_address[1]}/apis/trainer.kubeflow.org/v1alpha1/namespaces/ns/trainjobs/j/status"

    def close(self) -> None:
        self.hold.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    server = Server(tmp_path)
    yield server
    server.close()


def reporter(server: Server, tmp_path, lines: list[str], **kwargs) -> TrainerStatusReporter:
    token = tmp_path / "token"
    if not token.exists():
        token.write_text("first-token\n")
    env = {URL_ENV: server.url, CA_CERT_ENV: str(server.certificates.ca_cert), TOKEN_ENV: str(token)}
    made = TrainerStatusReporter.from_env(env, log=lines.append)
    assert made is not None
    for key, value in kwargs.items():
        setattr(made, key, value)
    return made


def at_step(step: int) -> ProgressSnapshot:
    return replace(SNAPSHOT, step=step, samples_seen=step * 8)


def test_nothing_is_pushed_without_the_controllers_variables():
    assert TrainerStatusReporter.from_env({}, log=print) is None


def wait_for(condition, timeout: float = 10.0) -> bool:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return True
        done.wait(0.01)
    return False


def test_the_latest_snapshot_wins_at_most_once_an_interval_and_the_end_is_100(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # the pod's proxy is not for a cluster Service
    lines: list[str] = []
    with reporter(server, tmp_path, lines, interval=3600.0) as status:
        status.report(at_step(1))
        assert server.arrived.wait(10)  # the first push goes at once
        (tmp_path / "token").write_text("rotated-token")  # the kubelet rotated it
        for step in range(2, 50):
            status.report(at_step(step))
    assert len(server.requests) == 2  # the first snapshot, then the end: none of the 48 between
    (first_auth, first), (end_auth, end) = server.requests
    assert first_auth == "Bearer first-token" and end_auth == "Bearer rotated-token"  # read at each push
    assert first["trainerStatus"]["progressPercentage"] == 0
    metrics = {m["name"]: m["value"] for m in end["trainerStatus"]["metrics"]}
    assert metrics["step"] == "49"  # the latest snapshot
    assert (
        end["trainerStatus"]["progressPercentage"],
        end["trainerStatus"]["estimatedRemainingSeconds"],
    ) == (100, 0)
    assert lines == [f"reporting progress to the TrainJob's status at {server.url}"]


def test_a_server_that_does_not_answer_never_holds_a_step(server, tmp_path):
    lines: list[str] = []
    server.hold.clear()  # the server takes the request and answers nothing
    status = reporter(server, tmp_path, lines, interval=0.0).__enter__()
    status.report(at_step(1))
    assert server.arrived.wait(10)
    for step in range(2, 200):  # the training goes on while the push hangs
        status.report(at_step(step))
    assert len(server.requests) == 1 and not server.hold.is_set()
    server.hold.set()
    status.__exit__(None, None, None)
    assert [body["trainerStatus"]["progressPercentage"] for _, body in server.requests][-1] == 100


def test_a_failure_is_logged_once_per_kind_without_the_token_and_training_goes_on(server, tmp_path):
    lines: list[str] = []
    server.close()  # nothing listens any more
    with reporter(server, tmp_path, lines, interval=0.0) as status:
        status.report(at_step(1))
        assert wait_for(lambda: len(lines) == 2)
        status.report(at_step(2))
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert warnings == [
        "warning: cannot report progress to the TrainJob's status (the status server is unreachable: "
        "Connection refused); training goes on"
    ]
    assert not any("first-token" in line for line in lines)


def test_a_refusal_says_the_servers_reason(tmp_path):
    refusing = Server(tmp_path, code=422)
    lines: list[str] = []
    try:
        with reporter(refusing, tmp_path, lines, interval=0.0) as status:
            status.report(at_step(1))
            assert wait_for(lambda: len(lines) == 2)
    finally:
        refusing.close()
    assert lines[1:] == [
        "warning: cannot report progress to the TrainJob's status (the status server refused it: "
        "422 metrics: Too many); training goes on"
    ]
    assert len(refusing.requests) == 2


def test_no_token_and_a_foreign_ca_are_named(server, tmp_path):
    lines: list[str] = []
    status = reporter(server, tmp_path, lines)
    status.token_file = str(tmp_path / "missing")
    status.close(completed=True)
    assert lines == [
        f"warning: cannot report progress to the TrainJob's status (no token to authenticate with "
        f"({TOKEN_ENV}: No such file or directory)); training goes on"
    ]
    assert server.requests == []
    other_ca = issue_certificates(tmp_path / "other", ("localhost",)).ca_cert
    lines.clear()
    status = reporter(server, tmp_path, lines)
    status.ca_file = str(other_ca)
    status.close(completed=True)
    assert lines == [
        "warning: cannot report progress to the TrainJob's status (TLS with the status server failed: "
        "CERTIFICATE_VERIFY_FAILED); training goes on"
    ]
    assert server.requests == []


def test_on_cuda_the_entrypoint_pushes_what_the_follower_reads(server, tmp_path, monkeypatch):
    """instructlab-training (a stand-in writing its metrics file) reports nothing itself: node 0's
    follower feeds the reporter the controller asked for, and the end pushes 100%."""
    import sys

    from airflow_provider_sft.core import constants as c
    from airflow_provider_sft.core.params import SFTParams
    from airflow_provider_sft.core.pod import entrypoint
    from airflow_provider_sft.core.run import TrainingRun
    from airflow_provider_sft.core.training import instructlab_command
    from tests.unit.core.training.test_progress import step_row

    (tmp_path / "token").write_text("pod-token")
    monkeypatch.setenv(URL_ENV, server.url)
    monkeypatch.setenv(CA_CERT_ENV, str(server.certificates.ca_cert))
    monkeypatch.setenv(TOKEN_ENV, str(tmp_path / "token"))
    run = TrainingRun(
        name="cuda-run",
        params=SFTParams.parse({"num_epochs": 2, "effective_batch_size": 8}),
        dataset_path=str(tmp_path / "train.jsonl"),
        output_dir=str(tmp_path / "run"),
    )
    (tmp_path / "run").mkdir()
    rows = [json.dumps(step_row(step)) for step in range(1, 41)]
    stand_in = (
        "import time\n"
        f"rows = {rows!r}\n"
        f"with open({str(tmp_path / 'run' / c.METRICS_FILE)!r}, 'a') as metrics:\n"
        "    for row in rows:\n"
        "        metrics.write(row + '\\n'); metrics.flush()\n"
        "        time.sleep(0.01)\n"
    )
    monkeypatch.setattr(
        instructlab_command, "build_command", lambda *a, **k: [sys.executable, "-c", stand_in]
    )
    monkeypatch.setattr(entrypoint, "_PREFIX", "")
    entrypoint._train_on_cuda(run, 1)
    assert server.requests and all(auth == "Bearer pod-token" for auth, _ in server.requests)
    end = server.requests[-1][1]["trainerStatus"]
    assert {m["name"]: m["value"] for m in end["metrics"]}["step"] == "40"
    assert (end["progressPercentage"], end["estimatedRemainingSeconds"]) == (100, 0)

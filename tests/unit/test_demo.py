"""The demo: what it prints while the DAG runs, and that Ctrl-C on ``--serve`` leaves nothing behind."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from airflow_provider_sft.demo import echo_text, serve_environment

STUBBORN_TREE = Path(__file__).resolve().parents[1] / "fakes" / "stubborn_tree.py"


def test_the_demo_echoes_the_message_of_a_training_line_without_logger_and_location():
    line = "2026-12-02 [info     ] [sft] done in 43.8s       [airflow_provider_sft.training] loc=training_log.py:21"
    assert echo_text(line) == "done in 43.8s"
    assert echo_text("x [sft] step 1/180 loss 6.3 [airflow.task] loc=a.py:1") == "step 1/180 loss 6.3"


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for_started(process: subprocess.Popen, path: Path, timeout: float = 30) -> None:
    """Until the stubborn tree says it wrote ``path`` (a line on its stdout): no polling loop."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready and process.stdout.readline() == b"started\n", f"{path} never appeared"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_ends_every_process_the_command_started_even_those_that_ignore_it(tmp_path, signum):
    pid_file = tmp_path / "pids"
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from airflow_provider_sft.supervisor import supervise; "
            f"sys.exit(supervise([sys.executable, {str(STUBBORN_TREE)!r}, {str(pid_file)!r}], grace=1))",
        ],
        start_new_session=True,  # like a terminal: the signal reaches the supervisor only
        stdout=subprocess.PIPE,
    )
    try:
        wait_for_started(supervisor, pid_file)
        pids = [int(line) for line in pid_file.read_text().split()]
        assert len(pids) == 6 and all(map(alive, pids))
        supervisor.send_signal(signum)
        assert supervisor.wait(30) == 0
        # The workers ignore SIGINT and SIGTERM; one escaped into its own session, one was orphaned.
        assert [pid for pid in pids if alive(pid)] == []
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
        for pid in pid_file.read_text().split() if pid_file.exists() else ():
            if alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)
        supervisor.stdout.close()


def test_the_served_airflow_fits_one_machine_and_shares_it(tmp_path, monkeypatch):
    for name in ("AIRFLOW__CORE__PARALLELISM", "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT", raising=False)
    env = serve_environment(tmp_path, tmp_path, 8080)
    assert 2 <= int(env["AIRFLOW__CORE__PARALLELISM"]) <= 4  # not Airflow's 32 workers
    ports = {int(env[f"AIRFLOW__LOGGING__{kind}_LOG_SERVER_PORT"]) for kind in ("WORKER", "TRIGGER")}
    assert len(ports) == 2 and not ports & {8793, 8794}  # free ports, not the fixed ones
    assert json.loads((tmp_path / "form-defaults.json").read_text())["resource_gpu_per_worker"] == 0
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "16")  # the user's setting wins
    assert serve_environment(tmp_path, tmp_path, 8080)["AIRFLOW__CORE__PARALLELISM"] == "16"


def test_the_served_airflow_hides_envs_by_name_and_keeps_the_users_sensitive_names(tmp_path, monkeypatch):
    from airflow_provider_sft.demo import SENSITIVE_NAMES_SETTING

    monkeypatch.delenv(SENSITIVE_NAMES_SETTING, raising=False)
    assert serve_environment(tmp_path, tmp_path, 8080)[SENSITIVE_NAMES_SETTING] == "envs"
    monkeypatch.setenv(SENSITIVE_NAMES_SETTING, "my_key, envs")
    assert serve_environment(tmp_path, tmp_path, 8080)[SENSITIVE_NAMES_SETTING] == "my_key,envs"

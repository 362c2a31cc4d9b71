"""The embedded local backend: streaming, exit status, timeout, memory limit and clean cancellation."""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from pathlib import Path

import psutil
import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends import Credentials, JobStatus
from airflow_provider_sft.core.backends.factory import build_backend
from airflow_provider_sft.core.backends.local import LocalConfig, LocalProcessBackend
from airflow_provider_sft.core.errors import DatasetError, InvalidParameterError
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.run import TrainingRun
from airflow_provider_sft.core.sample_data import bundled_dataset_path

FAKE_PYTHON = str(Path(__file__).resolve().parents[3] / "fakes" / "fake_training_python.py")


def make_run(tmp_path, **values) -> TrainingRun:
    base = {"resource_gpu_per_worker": 0, "resource_cpu_per_worker": "1", "resource_memory_per_worker": "4Gi"}
    return TrainingRun(
        name="test-run",
        params=SFTParams.parse({**base, **values}),
        dataset_path=str(bundled_dataset_path()),
        output_dir=str(tmp_path / "runs" / "test-run"),
    )


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def pids_from(lines: list[str]) -> list[int]:
    return [int(m) for line in lines for m in re.findall(r"pid=(\d+)", line)]


@pytest.mark.slow
def test_real_training_run_streams_logs_and_succeeds(tiny_model, tmp_path):
    run = make_run(
        tmp_path, base_model=str(tiny_model), effective_batch_size=64, max_seq_len=512, learning_rate=1e-3
    )
    backend = build_backend(LocalConfig())
    handle = backend.submit(run)
    lines: list[str] = []
    result = backend.wait(handle, on_log=lines.append, timeout_seconds=600)
    assert result.status is JobStatus.SUCCEEDED, result.message
    assert any(line.startswith("[sft] step 4/4") for line in lines)
    assert any("data processing: 235/235 samples kept" in line for line in lines)
    assert any(
        re.match(r"\[sft\] summary: 4 steps, .*final loss \d+\.\d{4} \(last step", line) for line in lines
    )
    assert not any("fsdp_sharding_strategy" in line for line in lines)  # the default: no note
    log_file = Path(run.output_dir) / c.TRAIN_LOG_FILE
    assert "[sft] done in" in log_file.read_text()
    assert (Path(run.output_dir) / c.METRICS_FILE).exists()


def test_failure_reason_is_the_error_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINING", "fail")
    backend = LocalProcessBackend(LocalConfig(python=FAKE_PYTHON))
    handle = backend.submit(make_run(tmp_path))
    result = backend.wait(handle, on_log=lambda _line: None)
    assert result.status is JobStatus.FAILED and result.exit_code == 3
    assert (
        result.message
        == "training process exited with status 3: Invalid training parameter: something precise went wrong"
    )


def test_real_entrypoint_error_is_surfaced(tmp_path):
    run = make_run(tmp_path, base_model=str(tmp_path / "no-such-model"))
    backend = build_backend(LocalConfig())
    result = backend.wait(backend.submit(run), on_log=lambda _line: None, timeout_seconds=300)
    assert result.status is JobStatus.FAILED
    assert f"base_model {tmp_path / 'no-such-model'} does not exist" in result.message


def test_cancel_stops_the_whole_process_group(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINING", "sleep")
    backend = LocalProcessBackend(LocalConfig(python=FAKE_PYTHON, grace_period_seconds=2))
    handle = backend.submit(make_run(tmp_path))
    lines: list[str] = []
    both_started = threading.Event()

    def on_log(line):
        lines.append(line)
        if len(pids_from(lines)) >= 2:
            both_started.set()

    waiter = threading.Thread(target=lambda: lines.append(backend.wait(handle, on_log=on_log)))
    waiter.start()
    both_started.wait(30)
    pids = pids_from(lines)
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    backend.cancel(handle)
    waiter.join(timeout=30)
    assert lines[-1].status is JobStatus.CANCELLED
    assert not any(alive(pid) for pid in pids), "a training process survived cancellation"
    backend.cancel(handle)  # idempotent


def test_timeout_cancels_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINING", "sleep")
    backend = LocalProcessBackend(
        LocalConfig(python=FAKE_PYTHON, grace_period_seconds=2, poll_interval_seconds=0.1)
    )
    handle = backend.submit(make_run(tmp_path))
    lines: list[str] = []
    result = backend.wait(handle, on_log=lines.append, timeout_seconds=1.5)
    assert result.status is JobStatus.TIMED_OUT
    assert result.message == "training did not finish within 1.5s"
    assert not any(alive(pid) for pid in pids_from(lines))


def test_memory_limit_is_enforced(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINING", "memory")
    backend = LocalProcessBackend(
        LocalConfig(python=FAKE_PYTHON, grace_period_seconds=2, poll_interval_seconds=0.1)
    )
    handle = backend.submit(make_run(tmp_path, resource_memory_per_worker="256Mi"))
    result = backend.wait(handle, on_log=lambda _line: None, timeout_seconds=60)
    assert result.status is JobStatus.FAILED
    assert "over resource_memory_per_worker (256 MiB)" in result.message


def test_training_envs_reach_the_process_and_win(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", "/home/me/.cache/huggingface")  # the user's cache and login
    run = make_run(tmp_path, envs="OMP_NUM_THREADS=3,MY_FLAG=on")
    env = LocalProcessBackend().environment(run)
    assert env["MY_FLAG"] == "on" and env["OMP_NUM_THREADS"] == "3"
    assert env["HF_HOME"] == "/home/me/.cache/huggingface"  # kept: no re-download, the token still found
    assert env["TRITON_CACHE_DIR"].startswith(run.output_dir)  # only what must be writable per run


def test_an_empty_dataset_stops_the_submit(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    run = dataclasses.replace(make_run(tmp_path), dataset_path=str(empty))
    with pytest.raises(DatasetError, match="is empty"):
        LocalProcessBackend().submit(run)
    assert not Path(run.output_dir).exists()


def test_previous_attempt_output_is_cleared_but_its_saved_state_is_left_to_the_training_process(
    tmp_path, monkeypatch
):
    """The training process decides whether the earlier attempt's state is resumed or removed (resume.py)."""
    monkeypatch.setenv("FAKE_TRAINING", "fail")
    run = make_run(tmp_path)
    state = Path(run.output_dir) / c.FULL_STATE_DIR / "epoch_0"
    state.mkdir(parents=True)
    stale = Path(run.output_dir) / c.FINAL_MODEL_DIR  # an earlier attempt's output, not its state
    stale.mkdir()
    dataset = Path(run.output_dir) / c.DATASET_DIR / "train.jsonl"  # the DAG run's, resolved before
    dataset.parent.mkdir()
    dataset.write_text("{}\n")
    prepared = Path(run.processed_data_dir) / "prepared.json"  # the prepare task's, by fingerprint
    prepared.parent.mkdir()
    prepared.write_text("{}")
    backend = LocalProcessBackend(LocalConfig(python=FAKE_PYTHON))
    backend.wait(backend.submit(run), on_log=lambda _line: None)
    assert not stale.exists()
    assert state.is_dir()  # judged by the training process, which logs what it does with it
    assert dataset.read_text() == "{}\n"  # one DAG run, one directory: its dataset stays
    assert prepared.read_text() == "{}"  # and its prepared data: the process checks its fingerprint
    assert TrainingRun.read_config(run.config_path).attempt  # names the attempt that saves a state


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [
        pytest.param({"resource_gpu_per_worker": 1}, InvalidParameterError, "CUDA device", id="gpu"),
        pytest.param({"resource_num_workers": 2}, InvalidParameterError, "one worker", id="workers"),
    ],
)
def test_preflight_rejects_before_anything_starts(tmp_path, values, error, message):
    backend = LocalProcessBackend(LocalConfig(python=FAKE_PYTHON))
    run = make_run(tmp_path, **values)
    with pytest.raises(error, match=message):
        backend.submit(run)
    assert not Path(run.output_dir).exists()


def test_preflight_rejects_a_missing_dataset(tmp_path):
    run = make_run(tmp_path)
    run = TrainingRun(run.name, run.params, str(tmp_path / "missing.jsonl"), run.output_dir)
    with pytest.raises(DatasetError, match="does not exist"):
        LocalProcessBackend().submit(run)
    assert not os.path.exists(run.output_dir)


def test_secret_env_reaches_the_process_but_never_the_run_config(tmp_path):
    run = make_run(tmp_path)
    backend = LocalProcessBackend(credentials=Credentials(hf_token="hf_local_secret"))
    assert backend.environment(run)["HF_TOKEN"] == "hf_local_secret"
    assert "hf_local_secret" not in str(run.to_json_dict())


@pytest.mark.parametrize(
    ("mode", "memory", "timeout", "status", "message"),
    [
        pytest.param(
            "chatty", "4Gi", 1.5, JobStatus.TIMED_OUT, "training did not finish within 1.5s", id="timeout"
        ),
        pytest.param(
            "chatty-memory",
            "256Mi",
            8,
            JobStatus.FAILED,
            "over resource_memory_per_worker (256 MiB)",
            id="memory",
        ),
    ],
)
def test_limits_stop_a_process_that_prints_steadily(
    tmp_path, monkeypatch, mode, memory, timeout, status, message
):
    """A line every 20 ms never leaves the output quiet for a poll interval: the limits must not wait for that."""
    monkeypatch.setenv("FAKE_TRAINING", mode)
    backend = LocalProcessBackend(
        LocalConfig(python=FAKE_PYTHON, grace_period_seconds=2, poll_interval_seconds=0.1)
    )
    handle = backend.submit(make_run(tmp_path, resource_memory_per_worker=memory))
    outcome: list = []
    waiter = threading.Thread(
        target=lambda: outcome.append(
            backend.wait(handle, on_log=lambda _line: None, timeout_seconds=timeout)
        ),
        daemon=True,
    )
    waiter.start()
    waiter.join(timeout=20)
    if not outcome:  # the bug: still following the output; stop it so the test ends
        backend.cancel(handle)
        waiter.join(timeout=30)
    assert outcome and outcome[0].status is status, "a steadily printing process was never stopped"
    assert message in outcome[0].message
    assert not alive(handle.pid)


def test_an_oci_base_model_is_refused_before_the_local_backend_starts(tmp_path):
    """Refused by the parameters, as on Kubernetes, not accepted here to fail in the process."""
    with pytest.raises(InvalidParameterError, match="oci:// base models are not supported yet"):
        LocalProcessBackend(LocalConfig(python=FAKE_PYTHON)).submit(
            make_run(tmp_path, base_model="oci://quay.io/m/granite:1")
        )
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def no_hub_token(tmp_path, monkeypatch):
    for name in ("HF_TOKEN", "HF_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no saved `hf auth login` token either


@pytest.mark.parametrize(
    ("base_model", "secret_env", "warned"),
    [
        pytest.param("Qwen/Qwen2.5-1.5B-Instruct", {}, True, id="hub-no-token"),
        pytest.param("Qwen/Qwen2.5-1.5B-Instruct", {"HF_TOKEN": "hf_local_secret"}, False, id="hub-token"),
        pytest.param("/models/base", {}, False, id="local-path"),
    ],
)
def test_a_hub_base_model_without_a_token_is_warned_about_once(
    tmp_path, monkeypatch, caplog, no_hub_token, base_model, secret_env, warned
):
    """A gated model would fail on the node, far from the cause: say where a token goes, never a value."""
    monkeypatch.setenv("FAKE_TRAINING", "fail")
    backend = LocalProcessBackend(LocalConfig(python=FAKE_PYTHON), credentials=Credentials(env=secret_env))
    with caplog.at_level("WARNING", logger="airflow_provider_sft"):
        backend.wait(backend.submit(make_run(tmp_path, base_model=base_model)), on_log=lambda _line: None)
    warnings = [r.getMessage() for r in caplog.records if "without a token" in r.getMessage()]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert "hf_conn_id" in warnings[0] and "HF_TOKEN" in warnings[0] and base_model in warnings[0]
    assert "hf_local_secret" not in caplog.text


def test_a_saved_hub_login_counts_as_a_token(tmp_path, monkeypatch, caplog, no_hub_token):
    (tmp_path / "hf-home").mkdir()
    (tmp_path / "hf-home" / "token").write_text("hf_saved")
    monkeypatch.setenv("FAKE_TRAINING", "fail")
    backend = LocalProcessBackend(LocalConfig(python=FAKE_PYTHON))
    with caplog.at_level("WARNING", logger="airflow_provider_sft"):
        backend.wait(backend.submit(make_run(tmp_path, base_model="org/gated")), on_log=lambda _line: None)
    assert "without a token" not in caplog.text


def test_the_prepare_step_runs_in_a_child_process_of_its_own(tiny_model, tmp_path, monkeypatch):
    """datasets forks worker pools; forked from the Airflow task's threaded process a worker can
    hang for ever on a lock another thread held (it did), so the step runs in a fresh interpreter."""
    from airflow_provider_sft.core.pod import steps

    monkeypatch.setitem(steps.STEPS, "prepare", None)  # a call in this process would be a TypeError
    lines: list[str] = []
    config = {
        "dataset_path": str(bundled_dataset_path()),
        "processed_dir": str(tmp_path / "data"),
        "base_model": str(tiny_model),
        "max_seq_len": 512,
        "effective_batch_size": 8,
        "num_epochs": 1,
    }
    result = LocalProcessBackend().run_step("prepare", "p", config, on_log=lines.append)
    assert result["report"]["kept_samples"] == 235 and (tmp_path / "data" / c.PROCESSED_DATA_FILE).is_file()
    assert any(line.startswith("[sft] tokenizing") for line in lines)
    assert not any("SFT_RESULT" in line for line in lines)  # the result is read, not shown


def test_a_failed_child_step_raises_with_its_error_line(tmp_path):
    from airflow_provider_sft.core.errors import TrainingFailedError

    config = {
        "dataset_path": str(tmp_path / "missing.jsonl"),
        "processed_dir": str(tmp_path / "data"),
        "base_model": str(tmp_path / "no-model"),
        "max_seq_len": 512,
        "effective_batch_size": 8,
        "num_epochs": 1,
    }
    with pytest.raises(
        TrainingFailedError,
        match=r"The prepare step failed \(exit status 1\): base_model .*no-model does not exist",
    ):
        LocalProcessBackend().run_step("prepare", "p", config, on_log=lambda line: None)

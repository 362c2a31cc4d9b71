"""Preemption loses no work: SIGTERM at a random step, then a new attempt with ``resume="auto"``.

Real processes and real signals: the pod program (``entrypoint train``) on the CPU loop, one
thread, on one node and on two nodes (two local processes joined over gloo by the ``PET_*``
variables, as Kubeflow Trainer sets them), SIGTERMed together as a suspended job's pods are. The
resumed run must be the unbroken run: final weights within 1e-6, the loss of every step equal,
each step recorded once, ``samples_seen`` continuous and the ``save_samples`` checkpoints on
schedule. Then a task retry through the local backend, as the operator drives it.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from safetensors.torch import load_file

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends import JobStatus
from airflow_provider_sft.core.backends.local import LocalConfig, LocalProcessBackend
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.run import TrainingRun
from airflow_provider_sft.core.sample_data import bundled_dataset_path
from airflow_provider_sft.core.training.prepare import prepare_data
from airflow_provider_sft.core.training.resume import IDENTITY_FILE

pytestmark = pytest.mark.slow

SAMPLES = 120  # of the bundled dataset: 2 epochs x 8 steps of 16 samples
TOTAL_STEPS = 16
RNG = random.Random(22)  # the steps SIGTERM comes at: random, and the same on every run of the suite
STEP_LINE = re.compile(r"^\[sft(?: node 0/\d)?\] step (\d+)/")
PREEMPTED = re.compile(
    r'^ERROR: preempted: saved the full state at step (\d+) \(epoch (\d), (\d+) samples seen\); resume="auto" continues from it$'
)


@pytest.fixture(scope="module")
def workspace(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """A dataset and its prepared data, which every run reuses (as after the prepare task)."""
    root = tmp_path_factory.mktemp("resume")
    dataset = root / "train.jsonl"
    lines = bundled_dataset_path().read_text().splitlines(keepends=True)
    dataset.write_text("".join(lines[:SAMPLES]))
    prepared = root / "prepared"
    prepare_data(
        dataset,
        prepared,
        base_model=str(tiny_model),
        max_seq_len=512,
        effective_batch_size=16,
        num_epochs=2,
        num_cpu_procs=1,
        env=os.environ,
    )
    return {"root": root, "dataset": dataset, "prepared": prepared, "model": tiny_model}


def training_run(
    workspace, name: str, *, nodes: int = 1, attempt: str = "", resume: str = "auto", **values
) -> TrainingRun:
    params = {
        "base_model": str(workspace["model"]),
        "resource_gpu_per_worker": 0,
        "resource_cpu_per_worker": "1",
        "resource_memory_per_worker": "4Gi",
        "resource_num_workers": nodes,
        "max_seq_len": 512,
        "max_tokens_per_gpu": 4096,
        "learning_rate": 1e-3,
        "effective_batch_size": 16,
        "num_epochs": 2,
        "save_samples": 48,  # checkpoints mid-epoch too: their schedule must carry on after a resume
        "data_output_dir": str(workspace["prepared"]),
        **values,
    }
    return TrainingRun(
        name=name,
        params=SFTParams.parse(params),
        dataset_path=str(workspace["dataset"]),
        output_dir=str(workspace["root"] / "runs" / name),
        attempt=attempt,
        resume=resume,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def attempt(
    run: TrainingRun, *, nodes: int = 1, sigterm_at: int | None = None
) -> tuple[list[int], list[str]]:
    """One attempt of the pod program on ``nodes`` local processes; SIGTERM to all of them when node 0
    reports step ``sigterm_at``. The exit codes and node 0's output lines."""
    run.write_config()
    port = str(free_port())
    nodes_env = [
        {**os.environ, "OMP_NUM_THREADS": "1", "PET_NNODES": str(nodes), "PET_NODE_RANK": str(rank)}
        | ({"PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": port} if nodes > 1 else {})
        for rank in range(nodes)
    ]
    command = [
        sys.executable,
        "-m",
        "airflow_provider_sft.core.pod.entrypoint",
        "train",
        str(run.config_path),
    ]
    processes = [
        subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE if rank == 0 else (Path(run.output_dir) / f"node{rank}.log").open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank, env in enumerate(nodes_env)
    ]
    lines = []
    assert processes[0].stdout is not None
    for line in processes[0].stdout:
        lines.append(line.rstrip("\n"))
        match = STEP_LINE.match(line)
        if match and int(match[1]) == sigterm_at:
            for process in processes:  # as the kubelet stops a suspended job's pods
                process.send_signal(signal.SIGTERM)
    return [process.wait(timeout=300) for process in processes], lines


def step_lines(run: TrainingRun) -> list[dict]:
    rows = [json.loads(line) for line in (Path(run.output_dir) / c.METRICS_FILE).read_text().splitlines()]
    return [row for row in rows if "avg_loss" in row]


def final_weights(run: TrainingRun) -> dict:
    return load_file(Path(run.output_dir) / c.FULL_STATE_DIR / "epoch_1" / "model" / "model.safetensors")


def checkpoints(run: TrainingRun) -> list[str]:
    return sorted(p.name for p in (Path(run.output_dir) / c.HF_FORMAT_DIR).iterdir())


def preempt_and_resume(workspace, name: str, nodes: int) -> None:
    unbroken = training_run(workspace, f"{name}-unbroken", nodes=nodes)
    codes, lines = attempt(unbroken, nodes=nodes)
    assert codes == [0] * nodes, "\n".join(lines[-30:])

    sigterm_at = RNG.randint(2, TOTAL_STEPS - 2)
    first = training_run(workspace, name, nodes=nodes, attempt="first")
    codes, lines = attempt(first, nodes=nodes, sigterm_at=sigterm_at)
    assert codes == [c.PREEMPTED_EXIT_CODE] * nodes, "\n".join(lines[-30:])
    preempted = PREEMPTED.match(lines[-1])
    assert preempted, lines[-1]
    step, epoch, seen = (int(group) for group in preempted.groups())
    assert sigterm_at <= step < TOTAL_STEPS  # at the next step boundary, not the epoch's end
    assert any(
        line.endswith(f"preempted: SIGTERM received, saving the full state at step {step}") for line in lines
    )
    if nodes > 1:  # every node stopped at the same step and says so
        assert PREEMPTED.match((Path(first.output_dir) / "node1.log").read_text().splitlines()[-1])

    second = training_run(workspace, name, nodes=nodes, attempt="second")
    codes, lines = attempt(second, nodes=nodes)
    assert codes == [0] * nodes, "\n".join(lines[-30:])
    prefix = "[sft] " if nodes == 1 else "[sft node 0/2] "
    assert (
        f"{prefix}resuming from full_state/epoch_{epoch}: epoch {epoch} at step {step}, {seen} samples seen, "
        "saved by attempt first"
    ) in lines
    assert not any(STEP_LINE.match(line) and int(STEP_LINE.match(line)[1]) <= step for line in lines)

    # one run, one curve: each step once, the same loss and samples as the unbroken run
    resumed, expected = step_lines(second), step_lines(unbroken)
    assert [row["step"] for row in resumed] == list(range(1, TOTAL_STEPS + 1))
    for got, want in zip(resumed, expected, strict=True):
        assert got["avg_loss"] == pytest.approx(want["avg_loss"], abs=1e-6), got["step"]
        assert (got["samples_seen"], got["lr"], got["epoch"]) == (
            want["samples_seen"],
            want["lr"],
            want["epoch"],
        )
    markers = [json.loads(line) for line in Path(second.output_dir, c.METRICS_FILE).read_text().splitlines()]
    markers = [row for row in markers if row.get("resumed")]
    assert markers == [
        {
            "resumed": True,
            "step": step,
            "samples_seen": seen,
            "epoch": epoch,
            "state": f"epoch_{epoch}",
            "attempt": "first",
        }
    ]
    assert checkpoints(second) == checkpoints(unbroken)  # save_samples went on on schedule
    got, want = final_weights(second), final_weights(unbroken)
    assert got.keys() == want.keys()
    assert max((got[key] - want[key]).abs().max().item() for key in want) <= 1e-6


def test_sigterm_at_a_random_step_then_resume_equals_the_unbroken_run_on_one_node(workspace):
    preempt_and_resume(workspace, "one-node", nodes=1)


def test_sigterm_to_both_nodes_then_resume_equals_the_unbroken_run_on_two_nodes(workspace):
    preempt_and_resume(workspace, "two-nodes", nodes=2)


# --- a task retry through the local backend ------------------------------------------------------


class Attempt:
    """One submit and wait of the local backend, as the train task does it; ``cancel_at`` kills the
    task at that step (the backend's cancel: SIGTERM to the process group, SIGKILL after a grace)."""

    def __init__(self, backend: LocalProcessBackend, run: TrainingRun, *, cancel_at: int | None = None):
        self.lines: list[str] = []
        handle = backend.submit(run)

        def on_log(line: str) -> None:
            self.lines.append(line)
            match = STEP_LINE.match(line)
            if match and int(match[1]) == cancel_at:
                threading.Thread(target=backend.cancel, args=(handle,)).start()

        self.result = backend.wait(handle, on_log=on_log, timeout_seconds=600)

    def line(self, start: str) -> str:
        return next(line for line in self.lines if line.startswith(start))


def test_a_task_retry_resumes_and_refuses_what_it_must_with_the_reason(workspace):
    backend = LocalProcessBackend(LocalConfig())
    run = training_run(workspace, "retried", num_epochs=1)
    out = Path(run.output_dir)

    killed = Attempt(backend, run, cancel_at=3)
    assert killed.result.status is JobStatus.CANCELLED
    step = int(PREEMPTED.match(killed.line("ERROR: preempted")).group(1))
    first_attempt = TrainingRun.read_config(run.config_path).attempt

    retried = Attempt(backend, run)
    assert retried.result.status is JobStatus.SUCCEEDED, retried.result.message
    assert retried.line("[sft] resuming from") == (
        f"[sft] resuming from full_state/epoch_0: epoch 0 at step {step}, {step * 16} samples seen, "
        f"saved by attempt {first_attempt}"
    )
    assert [row["step"] for row in step_lines(run)] == list(range(1, 9))

    never = Attempt(backend, training_run(workspace, "retried", num_epochs=1, resume="never"), cancel_at=2)
    assert never.line("[sft] starting clean") == (
        '[sft] starting clean: resume="never"; removed full_state, full_state.run.json, hf_format, '
        "training_params_and_metrics_global0.jsonl"
    )
    assert [row["step"] for row in step_lines(run)][:1] == [1]  # a new curve

    optimizer = out / c.FULL_STATE_DIR / "epoch_0" / "optimizer.bin"  # saved by the cancel at step 2
    with optimizer.open("r+b") as handle:  # a corrupted state: a file written after its metadata
        handle.truncate(100)
    # What the cancelled attempt left: hf_format/ only where it passed step 3 (48 samples) before
    # the SIGTERM was handled, which depends on the machine's load.
    left = [
        name
        for name in (c.FULL_STATE_DIR, IDENTITY_FILE, c.HF_FORMAT_DIR, c.METRICS_FILE)
        if (out / name).exists()
    ]
    assert left[:2] == [c.FULL_STATE_DIR, IDENTITY_FILE] and left[-1] == c.METRICS_FILE
    corrupted = Attempt(backend, run, cancel_at=1)
    assert corrupted.line("[sft] starting clean") == (
        "[sft] starting clean: no complete saved state: epoch_0 (optimizer.bin is newer than its "
        f"training_metadata.json (written in part)); removed {', '.join(left)}"
    )

    (out / IDENTITY_FILE).unlink()  # a foreign state: not written by this run
    foreign = Attempt(backend, run, cancel_at=1)
    assert foreign.line("[sft] starting clean").startswith(
        f"[sft] starting clean: the saved state has no readable {IDENTITY_FILE}: foreign, never resumed"
    )

    other = Attempt(
        backend, training_run(workspace, "retried", num_epochs=1, learning_rate=2e-3), cancel_at=1
    )
    assert other.line("[sft] starting clean").startswith(
        "[sft] starting clean: the saved state is of another run: learning_rate differ"
    )
    assert not re.search(r"0\.00[12]|e-0", other.line("[sft] starting clean"))  # the field, never its values

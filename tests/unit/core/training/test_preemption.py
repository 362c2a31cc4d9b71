"""SIGTERM as a stop request: the CPU loop's flag, and the CUDA path's parent, with real processes and signals.

The CUDA path cannot run here: its parent (:func:`run_checkpointing_on_sigterm`) runs a stand-in
for torchrun that does what instructlab's workers do with ``--on_demand_checkpointing``: watch
for the trigger file with instructlab's own function, save a full state, return.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.training.preemption import StopOnSigterm

#: What instructlab's workers do on the trigger: save full_state/epoch_0 (a torch-pickled
#: training_metadata.json, last) and return; "nosave" returns without saving.
WORKERS = textwrap.dedent(
    """
    import pathlib, sys, time
    import torch
    from instructlab.training.on_demand_checkpoint import remove_trigger_file, trigger_file_exists

    out, mode = pathlib.Path(sys.argv[1]), sys.argv[2]
    print("workers ready", flush=True)
    while not trigger_file_exists():
        time.sleep(0.05)
    if mode == "save":
        state = out / "full_state" / "epoch_0"
        state.mkdir(parents=True)
        (state / "model.safetensors").write_bytes(b"weights")
        torch.save({"current_epoch": 0, "samples_seen": 64, "global_step": 2}, state / "training_metadata.json")
    remove_trigger_file()
    print("workers done", flush=True)
    """
)
PARENT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from airflow_provider_sft.core.errors import SFTError, PreemptedError
    from airflow_provider_sft.core.training.preemption import run_checkpointing_on_sigterm

    workers, out, mode, trigger = sys.argv[1:]
    try:
        code = run_checkpointing_on_sigterm(
            [sys.executable, workers, out, mode], output_dir=Path(out), trigger_name=trigger
        )
    except PreemptedError as exc:
        print("ERROR: " + str(exc), flush=True)
        sys.exit(75)
    except SFTError as exc:
        print("ERROR: " + str(exc), flush=True)
        sys.exit(1)
    print(f"torchrun exited {code}", flush=True)
    """
)


def test_sigterm_sets_the_flag_instead_of_ending_the_process_and_the_old_handler_returns():
    previous = signal.getsignal(signal.SIGTERM)
    with StopOnSigterm() as stop:
        assert not stop.agreed(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.agreed(1)  # still alive: the loop stops at its next step boundary
    assert signal.getsignal(signal.SIGTERM) is previous


def run_parent(tmp_path: Path, mode: str, *, terminate: bool) -> tuple[int, str, Path]:
    (tmp_path / "workers.py").write_text(WORKERS)
    (tmp_path / "parent.py").write_text(PARENT)
    out = tmp_path / "run"
    out.mkdir()
    trigger = f"sft-test-{os.getpid()}-{mode}"
    parent = subprocess.Popen(
        [sys.executable, str(tmp_path / "parent.py"), str(tmp_path / "workers.py"), str(out), mode, trigger],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert parent.stdout is not None
    lines = []
    for line in parent.stdout:
        lines.append(line)
        if line.startswith("workers ready"):
            break
    if terminate:
        parent.send_signal(signal.SIGTERM)  # the parent only: as the kubelet signals a container's PID 1
    else:
        Path("/dev/shm", trigger).write_bytes(b"1")  # let the workers finish on their own
    lines += parent.stdout.readlines()
    assert not Path("/dev/shm", trigger).exists()  # never left for a later run
    return parent.wait(timeout=60), "".join(lines), out


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="instructlab's trigger lives in /dev/shm")
def test_sigterm_to_the_parent_makes_the_workers_save_and_the_run_ends_preempted(tmp_path):
    code, output, out = run_parent(tmp_path, "save", terminate=True)
    assert code == c.PREEMPTED_EXIT_CODE, output
    assert "workers done" in output  # the workers were not signalled: they saved and returned
    assert (
        "ERROR: preempted: saved the full state at step 2 (epoch 0, 64 samples seen); "
        'resume="auto" continues from it'
    ) in output
    assert (out / "full_state" / "epoch_0" / "training_metadata.json").is_file()


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="instructlab's trigger lives in /dev/shm")
def test_a_signal_without_a_saved_state_is_a_failure_that_says_so(tmp_path):
    code, output, _ = run_parent(tmp_path, "nosave", terminate=True)
    assert code == 1, output
    assert "ERROR: SIGTERM received, but instructlab-training saved no full state" in output


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="instructlab's trigger lives in /dev/shm")
def test_without_a_signal_the_exit_status_is_torchruns(tmp_path):
    code, output, _ = run_parent(tmp_path, "nosave", terminate=False)
    assert code == 0 and "torchrun exited 0" in output, output

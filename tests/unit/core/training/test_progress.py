"""Progress lines: their format, how many a run gets, and the follower of instructlab's metrics file."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta

import pytest

from airflow_provider_sft.core.training.progress import (
    MetricsFollower,
    ProgressTracker,
    is_progress_step,
    progress_line,
)

START = datetime(2026, 1, 1, 12, 0, 0)


def test_the_cpu_loops_line_is_unchanged():
    line = progress_line(
        step=1,
        total_steps=4,
        epoch=0,
        num_epochs=1,
        loss=6.29071,
        lr=0.001,
        grad_norm=6.5391,
        samples_per_second=27.46,
        eta_seconds=7.2,
    )
    assert line == "step 1/4 epoch 1/1 loss 6.2907 lr 0.001 grad_norm 6.539 27.5 samples/s ETA 7s"


def test_what_is_not_known_is_left_out():
    line = progress_line(
        step=7,
        total_steps=None,
        epoch=1,
        num_epochs=2,
        loss=None,
        lr=2e-5,
        grad_norm=None,
        samples_per_second=None,
        eta_seconds=None,
    )
    assert line == "step 7 epoch 2/2 loss ? lr 2e-05"


def test_about_twenty_lines_a_run():
    assert [s for s in range(1, 5) if is_progress_step(s, 4)] == [1, 2, 3, 4]
    shown = [s for s in range(1, 181) if is_progress_step(s, 180)]
    assert shown[0] == 1 and shown[-1] == 180 and 20 <= len(shown) <= 22
    assert [s for s in range(1, 25) if is_progress_step(s, None)] == [1, 10, 20]


def step_row(step: int, *, epoch_steps: int | None = 20, **extra) -> dict:
    """A step line as instructlab-training's main_ds writes it (a few of its keys)."""
    row = {
        "epoch": (step - 1) // 20,
        "step": step,
        "rank": 0,
        "overall_throughput": 8.0,  # the step's samples over its second
        "lr": 1e-5,
        "avg_loss": 2.0 - step / 100,
        "samples_seen": step * 8,
        "gradnorm": 0.5,
        "total_samples": 160,
        "timestamp": (START + timedelta(seconds=step)).isoformat(),
        **extra,
    }
    if epoch_steps is not None:
        row["num_epoch_steps"] = epoch_steps
    return row


def append(path, *rows, raw: str = "") -> None:
    with path.open("a") as handle:
        handle.write("".join(json.dumps(row) + "\n" for row in rows) + raw)


def follower(path, lines: list[str], **kwargs) -> MetricsFollower:
    return MetricsFollower(path, num_epochs=2, effective_batch_size=8, log=lines.append, **kwargs)


def test_the_follower_prints_the_progress_lines_of_what_the_file_gains(tmp_path):
    metrics = tmp_path / "training_params_and_metrics_global0.jsonl"
    lines: list[str] = []
    follow = follower(metrics, lines)
    follow.poll()  # no file yet: nothing, no error
    append(metrics, {"num_gpus": 1, "total_samples": 160, "hparams": True}, step_row(1), step_row(2))
    follow.poll()
    assert lines == [
        "step 1/40 epoch 1/2 loss 1.9900 lr 1e-05 grad_norm 0.500 8.0 samples/s ETA 39s",
        "step 2/40 epoch 1/2 loss 1.9800 lr 1e-05 grad_norm 0.500 8.0 samples/s ETA 38s",
    ]
    half = json.dumps(step_row(4))
    append(metrics, step_row(3), raw=half[:30])  # the writer is mid-line
    follow.poll()
    assert len(lines) == 2  # step 3 is no progress step; step 4 is not whole yet
    append(metrics, raw=half[30:] + "\n")
    append(metrics, *(step_row(s) for s in range(5, 41)), {"val_loss": 1.0, "step": 40})
    follow.poll()
    steps = [int(line.split()[1].split("/")[0]) for line in lines]
    assert steps == [1, *range(2, 41, 2)]  # every 40 // 20 = 2 steps, and the first and last
    assert lines[-1] == "step 40/40 epoch 2/2 loss 1.6000 lr 1e-05 grad_norm 0.500 8.0 samples/s ETA 0s"
    assert lines[11].startswith("step 22/40 epoch 2/2 ") and lines[11].endswith(" ETA 18s")


def test_the_total_is_estimated_from_the_samples_when_the_lines_lack_it(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    lines: list[str] = []
    append(metrics, step_row(1, epoch_steps=None, total_samples=100, gradnorm=None, avg_loss=float("nan")))
    follower(metrics, lines).poll()
    # ceil(100 / 8) x 2 epochs; (200 - 8) samples left at the step's own 8 samples/s
    assert lines == ["step 1/26 epoch 1/2 loss nan lr 1e-05 8.0 samples/s ETA 24s"]


def test_unreadable_lines_are_skipped(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    lines: list[str] = []
    append(metrics, raw='{"torn": \n[1, 2]\n')
    append(metrics, step_row(1))
    follower(metrics, lines).poll()
    assert len(lines) == 1 and lines[0].startswith("step 1/40 ")


def test_as_a_context_manager_it_follows_while_the_file_is_written_and_prints_the_end(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    lines: list[str] = []
    printed = threading.Event()

    def log(line):
        lines.append(line)
        printed.set()

    with MetricsFollower(metrics, num_epochs=2, effective_batch_size=8, log=log, interval=0.05):
        append(metrics, step_row(1))
        printed.wait(10)
        assert lines == [lines[0]] and lines[0].startswith("step 1/40 ")  # seen while "training" runs
        append(metrics, *(step_row(s) for s in range(2, 41)))
    assert lines[-1].startswith("step 40/40 ")  # the rest is read on exit
    assert len(lines) == 21


def test_on_cuda_the_entrypoint_prints_progress_from_the_metrics_file(tmp_path, monkeypatch, capfd):
    """instructlab-training (here a stand-in writing its metrics file and a progress bar) prints
    nothing the task log shows; the entrypoint's follower prints the progress lines."""
    import sys

    from airflow_provider_sft.core import constants as c
    from airflow_provider_sft.core.params import SFTParams
    from airflow_provider_sft.core.pod import entrypoint
    from airflow_provider_sft.core.pod.protocol import classify_log_line
    from airflow_provider_sft.core.run import TrainingRun
    from airflow_provider_sft.core.training import instructlab_command

    run = TrainingRun(
        name="cuda-run",
        params=SFTParams.parse({"num_epochs": 2, "effective_batch_size": 8}),
        dataset_path=str(tmp_path / "train.jsonl"),
        output_dir=str(tmp_path / "run"),
    )
    (tmp_path / "run").mkdir()
    rows = [json.dumps(step_row(step)) for step in range(1, 41)]
    stand_in = (
        "import sys, time\n"
        f"rows = {rows!r}\n"
        f"with open({str(tmp_path / 'run' / c.METRICS_FILE)!r}, 'a') as metrics:\n"
        "    for i, row in enumerate(rows):\n"
        "        sys.stderr.write(f'\\rEpoch 0: {i}/40'); sys.stderr.flush()\n"
        "        metrics.write(row + '\\n'); metrics.flush()\n"
        "        time.sleep(0.01)\n"
    )
    monkeypatch.setattr(
        instructlab_command, "build_command", lambda *a, **k: [sys.executable, "-c", stand_in]
    )
    entrypoint._train_on_cuda(run, 1)
    out, err = capfd.readouterr()
    shown = [s.text for line in out.splitlines() if (s := classify_log_line(line)) is not None]
    progress = [line for line in shown if line.startswith("[sft] step ")]
    assert len(progress) == 21 and progress[-1].startswith("[sft] step 40/40 epoch 2/2 loss 1.6000 ")
    assert "Epoch 0" in err and not any("Epoch 0" in line for line in shown)


def test_the_summary_line_says_where_the_loss_ended():
    from airflow_provider_sft.core.results.metrics import StepRecord, summarize
    from airflow_provider_sft.core.training.progress import summary_line

    records = [
        StepRecord(
            step=n,
            epoch=0,
            loss=4.0 / n,
            lr=1e-4,
            samples_seen=8 * n,
            tokens=100,
            throughput=20.0,
            timestamp=None,
        )
        for n in range(1, 11)
    ]
    line = summary_line(summarize(records))
    assert line.startswith("summary: 10 steps, 1 epochs, final loss ")
    assert "(last step 0.4000, min 0.4000" in line and "80 samples, 1000 tokens, 20.0 samples/s" in line
    assert "final loss ? (last step ?" in summary_line(summarize([]))


# --- the tracker: one progress computation for the CPU loop and the follower (#23) ---------------


def tracker(**kwargs) -> ProgressTracker:
    return ProgressTracker(num_epochs=2, effective_batch_size=8, **kwargs)


def timed_rows(seconds_per_step: list[float], *, first_step: int = 1, start: float = 0.0) -> list[dict]:
    """Step lines of 8 samples each (160 a epoch, 2 epochs: 320 in the run), written after each
    step's time: ``seconds_per_step[i]`` is how long step ``first_step + i`` took."""
    rows, when = [], START + timedelta(seconds=start)
    for offset, seconds in enumerate(seconds_per_step):
        step = first_step + offset
        when += timedelta(seconds=seconds)
        rows.append(step_row(step, overall_throughput=8 / seconds, timestamp=when.isoformat()))
    return rows


def test_the_line_gains_tokens_per_second():
    line = progress_line(
        step=3,
        total_steps=40,
        epoch=0,
        num_epochs=2,
        loss=1.0,
        lr=1e-5,
        grad_norm=None,
        samples_per_second=31.24,
        eta_seconds=95.4,
        tokens_per_second=2210.4,
    )
    assert line == "step 3/40 epoch 1/2 loss 1.0000 lr 1e-05 31.2 samples/s 2210 tokens/s ETA 95s"


def test_the_eta_follows_a_speed_that_changes_midway():
    """Steps of 1 s, then of 4 s from step 21: once the window holds only slow steps, the ETA is the
    samples left at the new speed (2 samples/s), not the run's average and not steps over samples/s."""
    progress = tracker()
    rows = timed_rows([1.0] * 20 + [4.0] * 20)
    snapshots = [progress.update(row) for row in rows]
    at_20 = snapshots[19]
    assert at_20.samples_per_second == pytest.approx(8.0)
    assert at_20.eta_seconds == pytest.approx((320 - 160) / 8.0)
    at_35 = snapshots[34]  # steps 26-35 in the window: all at 4 s a step
    assert at_35.samples_per_second == pytest.approx(2.0)
    assert at_35.eta_seconds == pytest.approx((320 - 280) / 2.0)  # 20 s: the 5 steps left, 4 s each
    run_average = (280 - 8) / (20 * 1.0 + 15 * 4.0 - 1.0)  # samples since step 1 over their time
    assert abs(at_35.eta_seconds - (320 - 280) / run_average) > 5  # the whole-run average is off
    assert at_35.eta_seconds != pytest.approx(5 / 2.0)  # steps left over samples/s: a unit error
    mid = snapshots[24]  # 5 slow steps in a window of 10: between the two speeds
    assert 2.0 < mid.samples_per_second < 8.0
    assert snapshots[-1].eta_seconds == 0 and snapshots[-1].percent == 100


def test_the_window_is_at_most_its_seconds_long():
    progress = tracker(window_steps=10, window_seconds=5.0)
    snapshots = [progress.update(row) for row in timed_rows([1.0] * 5 + [3.0] * 5)]
    # the last 5 s hold steps 9 and 10 only (3 s each): 16 samples over their 6 s, not the 10-step 22 s
    assert snapshots[-1].samples_per_second == pytest.approx(8 / 3.0)


def test_a_resumed_run_times_only_its_own_steps():
    """instructlab's metrics file after a preemption: steps 1-10, the resume marker (state at step 6),
    then steps 7-14 an hour later at 2 s a step. The hour is no training speed."""
    progress = tracker()
    first = timed_rows([1.0] * 10)
    marker = {"resumed": True, "step": 6, "samples_seen": 48, "epoch": 0, "state": "epoch_0", "attempt": "a1"}
    second = timed_rows([2.0] * 8, first_step=7, start=3600.0)
    for row in first:
        progress.update(row)
    assert progress.update(marker) is None
    snapshots = [progress.update(row) for row in second]
    assert snapshots[0].samples_per_second == pytest.approx(4.0)  # the step's own throughput
    assert snapshots[0].percent == 56 * 100 // 320
    assert snapshots[1].samples_per_second == pytest.approx(4.0)
    assert snapshots[-1].eta_seconds == pytest.approx((320 - 112) / 4.0)

    # the same without the marker: the step number going back starts a new window too
    progress = tracker()
    for row in first:
        progress.update(row)
    snapshots = [progress.update(row) for row in second]
    assert snapshots[1].samples_per_second == pytest.approx(4.0)

    # the CPU loop resumed in a new process: a new tracker, whose first step is step 7
    progress = tracker()
    snapshots = [progress.update(row) for row in second]
    assert snapshots[-1].eta_seconds == pytest.approx((320 - 112) / 4.0) and snapshots[-1].step == 14


def test_a_snapshot_carries_the_runs_progress_and_the_latest_validation_loss():
    from airflow_provider_sft.core.results.metrics import smooth

    progress = tracker()
    rows = [step_row(step, num_tokens_rank0=400) for step in range(1, 6)]
    snapshots = [progress.update(row) for row in rows]
    last = snapshots[-1]
    assert (last.step, last.total_steps, last.epoch, last.num_epochs) == (5, 40, 0, 2)
    assert (last.samples_seen, last.total_samples, last.percent) == (40, 320, 12)  # floor(12.5)
    assert last.loss == pytest.approx(1.95) and last.lr == 1e-5
    assert [s.loss_smoothed for s in snapshots] == smooth([row["avg_loss"] for row in rows])
    assert last.tokens_per_second == pytest.approx(400.0)  # 4 steps of 400 tokens over 4 s
    assert last.validation_loss is None and last.gets_line is False and snapshots[0].gets_line

    # instructlab 0.16.2's validation line (main_ds.compute_validation_loss, logged with the step)
    validated = progress.update({"val_loss": 1.75, "val_num_tokens": 900, "step": 5, "timestamp": "x"})
    assert validated.validation_loss == 1.75 and validated.step == 5 and not validated.gets_line
    following = progress.update(step_row(6))
    assert following.validation_loss == 1.75 and following.gets_line  # kept until the next one
    assert progress.update({"hparams": True, "total_samples": 160}) is None

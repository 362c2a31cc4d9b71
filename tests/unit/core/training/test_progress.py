"""Progress lines: their format, how many a run gets, and the follower of instructlab's metrics file."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta

from airflow_provider_sft.core.training.progress import MetricsFollower, is_progress_step, progress_line

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
        "overall_throughput": 50.0,
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
        "step 1/40 epoch 1/2 loss 1.9900 lr 1e-05 grad_norm 0.500 50.0 samples/s",
        "step 2/40 epoch 1/2 loss 1.9800 lr 1e-05 grad_norm 0.500 50.0 samples/s ETA 38s",
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
    assert lines[-1] == "step 40/40 epoch 2/2 loss 1.6000 lr 1e-05 grad_norm 0.500 50.0 samples/s ETA 0s"
    assert lines[11].startswith("step 22/40 epoch 2/2 ") and lines[11].endswith(" ETA 18s")


def test_the_total_is_estimated_from_the_samples_when_the_lines_lack_it(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    lines: list[str] = []
    append(metrics, step_row(1, epoch_steps=None, total_samples=100, gradnorm=None, avg_loss=float("nan")))
    follower(metrics, lines).poll()
    assert lines == ["step 1/26 epoch 1/2 loss nan lr 1e-05 50.0 samples/s"]  # ceil(100 / 8) x 2 epochs


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

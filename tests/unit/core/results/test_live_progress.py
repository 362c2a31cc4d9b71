"""The waiter's progress: read from trainerStatus or a step line, said about every 5%, shown as numbers."""

from __future__ import annotations

import itertools

import pytest

from airflow_provider_sft.core.results.live_progress import (
    SOURCE_OUTPUT,
    SOURCE_POD_LOG,
    SOURCE_TRAINER_STATUS,
    LiveProgress,
    Progress,
    from_progress_line,
    from_trainer_status,
    progress_of_payload,
    progress_text,
    say_when_due,
)
from airflow_provider_sft.core.training.progress import progress_line


def trainjob(percent=45, eta=120, **metrics):
    metrics = {
        "step": "90",
        "total_steps": "200",
        "epoch": "1",
        "num_epochs": "2",
        "loss": "1.23457",
        **metrics,
    }
    return {
        "kind": "TrainJob",
        "status": {
            "trainerStatus": {
                "progressPercentage": percent,
                "estimatedRemainingSeconds": eta,
                "metrics": [{"name": k, "value": v} for k, v in metrics.items()],
                "lastUpdatedTime": "2026-12-06T04:00:00Z",
            }
        },
    }


def test_trainer_status_reads_the_contracts_metric_names():
    progress = from_trainer_status(trainjob(tokens_per_second="812.5", learning_rate="2e-05"))
    assert progress == Progress(
        SOURCE_TRAINER_STATUS,
        step=90,
        total_steps=200,
        epoch=1,
        num_epochs=2,
        percent=45,
        loss=1.23457,
        learning_rate=2e-05,
        tokens_per_second=812.5,
        eta_seconds=120,
    )


@pytest.mark.parametrize(
    "job",
    [
        pytest.param({"kind": "TrainJob", "status": {}}, id="gate-off"),
        pytest.param({"kind": "PyTorchJob", "status": {"conditions": []}}, id="pytorchjob"),
        pytest.param(None, id="no-object"),
    ],
)
def test_no_trainer_status_is_no_progress(job):
    assert from_trainer_status(job) is None


def test_a_metric_that_is_not_a_number_is_left_out_never_shown():
    progress = from_trainer_status(trainjob(loss="hf_SecretLookingValue", tokens_per_second="nan"))
    assert progress is not None and progress.loss is None and progress.tokens_per_second is None
    assert "hf_" not in progress_text(progress)


def test_the_percentage_is_computed_from_steps_when_the_status_has_none():
    job = trainjob()
    del job["status"]["trainerStatus"]["progressPercentage"]
    assert from_trainer_status(job).percent == 45  # 90 of 200, floored


def test_the_pods_own_progress_line_is_read_back():
    line = "[sft] " + progress_line(
        step=30,
        total_steps=200,
        epoch=0,
        num_epochs=2,
        loss=1.2345,
        lr=2e-05,
        grad_norm=0.8,
        samples_per_second=31.2,
        eta_seconds=95,
    )
    assert from_progress_line(line) == Progress(
        SOURCE_POD_LOG,
        step=30,
        total_steps=200,
        epoch=1,
        num_epochs=2,
        percent=15,
        loss=1.2345,
        learning_rate=2e-05,
        samples_per_second=31.2,
        eta_seconds=95,
    )


def test_new_and_unknown_fields_of_a_step_line_change_nothing_else():
    line = (
        "[sft node 0/2] step 7/40 epoch 2/2 loss 0.5000 lr 1e-05 val_loss 0.61 812.3 tokens/s mfu 0.41 ETA 1m"
    )
    progress = from_progress_line(line, SOURCE_OUTPUT)
    assert (progress.step, progress.total_steps, progress.percent, progress.epoch) == (7, 40, 17, 2)
    assert (progress.loss, progress.tokens_per_second, progress.source) == (0.5, 812.3, SOURCE_OUTPUT)


@pytest.mark.parametrize(
    "line",
    ["[sft] data prepared before the job", "step", "[sft] summary: 30 steps", "loss 1.0 step 3/4"],
)
def test_other_lines_are_not_progress(line):
    assert from_progress_line(line) is None


def test_the_line_says_step_percent_loss_speed_eta_and_the_source():
    progress = from_trainer_status(trainjob(tokens_per_second="812.5", eta=None, percent=15))
    progress = Progress(**{**progress.to_dict(), "eta_seconds": 130})
    assert progress_text(progress) == (
        "progress 15%: step 90/200, epoch 1/2, loss 1.2346, 812 tokens/s, ETA 2m10s (from status.trainerStatus)"
    )


def reading(step, total=200, source=SOURCE_POD_LOG):
    return Progress(
        source,
        step=step,
        total_steps=total,
        percent=100 * step // total,
        loss=2.0 - step / total,
        learning_rate=1e-4,
    )


def test_a_line_every_five_percent_never_within_thirty_seconds():
    tracker, said = LiveProgress(), []
    # one reading every 10 s, 1% each: 5% every 50 s, so the 5% rule decides
    for second, step in enumerate(range(2, 200, 2)):
        tracker.observe(reading(step))
        say_when_due(tracker, lambda t: said.append((t.said_at, t.said.percent)), second * 10.0)
    percents = [percent for _, percent in said]
    assert percents[0] == 1 and all(b - a >= 5 for a, b in itertools.pairwise(percents))
    assert all(b - a >= 30 for (a, _), (b, _) in itertools.pairwise(said))
    # fast readings (5% a second): the 30 s floor decides
    fast, times = LiveProgress(), []
    for second, step in enumerate(range(10, 200, 10)):
        fast.observe(reading(step))
        say_when_due(fast, lambda t: times.append(t.said_at), float(second))
    assert times == [0.0]  # 19 s of readings: only the first was said


def test_a_slow_job_gets_a_line_every_few_minutes_whatever_the_percentage():
    tracker, said = LiveProgress(), []
    for minute in range(10):
        tracker.observe(reading(1000 + minute, total=100000))
        say_when_due(tracker, lambda t: said.append(t.said_at), minute * 60.0)
    assert said == [0.0, 180.0, 360.0, 540.0]


def test_trainer_status_wins_over_the_log_once_seen_and_the_curve_follows_the_steps():
    tracker = LiveProgress()
    tracker.observe(reading(10))
    tracker.observe(reading(20, source=SOURCE_TRAINER_STATUS))
    tracker.observe(reading(15))  # an older log line after the status: ignored
    assert tracker.latest.source == SOURCE_TRAINER_STATUS and tracker.from_trainer_status
    tracker.observe(reading(12, source=SOURCE_TRAINER_STATUS))  # resumed from step 11's state
    assert [step for step, _, _ in tracker.curve] == [10, 12]


def test_the_payload_round_trips_and_carries_numbers_only():
    tracker = LiveProgress()
    for step in range(1, 600):
        tracker.observe(reading(step, total=600))
    payload = tracker.payload("sft-run", updated="2026-12-06T04:00:00+00:00")
    progress, curve, updated = progress_of_payload(payload)
    assert progress == reading(599, total=600) and updated == "2026-12-06T04:00:00+00:00"
    assert len(curve) <= 400 and curve[-1] == (599, 2.0 - 599 / 600, 1e-4) and curve == sorted(curve)
    assert progress_of_payload({"progress": {"source": "<script>", "step": 1}}) is None
    assert progress_of_payload("not a payload") is None

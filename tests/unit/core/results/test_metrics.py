"""Parsing instructlab's metrics JSONL into the summary."""

from __future__ import annotations

import json
import math

import pytest

from airflow_provider_sft.core.results.metrics import (
    SMOOTHING_WEIGHT,
    perplexity,
    read_step_records,
    smooth,
    summarize,
    summarize_file,
    write_summary,
)


def write_lines(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


HPARAMS = {
    "model_name_or_path": "m",
    "learning_rate": 1e-5,
    "hparams": True,
    "timestamp": "2026-01-01T00:00:00",
}


def step(n, loss, **extra):
    return {
        "epoch": 0,
        "step": n,
        "avg_loss": loss,
        "lr": 1e-5,
        "samples_seen": n * 4,
        "num_tokens_rank0": 100,
        "overall_throughput": 2.0,
        "timestamp": f"2026-01-01T00:00:{n:02d}",
        **extra,
    }


def test_summary_of_a_normal_run(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", [HPARAMS, step(1, 3.0), step(2, 2.0), step(3, 2.5)])
    summary = summarize_file(path)
    assert summary.final_loss == 2.5
    assert summary.min_loss == 2.0
    assert summary.perplexity == pytest.approx(math.exp(2.5))
    assert (summary.steps, summary.total_tokens, summary.samples_seen) == (3, 300, 12)
    assert summary.runtime_seconds == 2.0
    assert summary.avg_throughput_samples_per_second == 2.0


def test_last_line_of_a_repeated_step_wins(tmp_path):
    # A resumed run logs step 2 again; the later value is the real one.
    path = write_lines(tmp_path / "m.jsonl", [step(1, 3.0), step(2, 9.0), step(2, 1.5)])
    records, _ = read_step_records(path)
    assert [(r.step, r.loss) for r in records] == [(1, 3.0), (2, 1.5)]
    assert summarize(records).final_loss == 1.5
    assert summarize(records).min_loss == 1.5


def test_nan_and_infinity_are_counted_not_used(tmp_path):
    # Python's json writes NaN/Infinity literals, which orjson alone would reject.
    path = write_lines(tmp_path / "m.jsonl", [step(1, 2.0), step(2, float("nan")), step(3, float("inf"))])
    summary = summarize_file(path)
    assert summary.min_loss == 2.0
    assert summary.final_loss is None
    assert summary.perplexity is None
    assert summary.non_finite_losses == 2
    out = write_summary(summary, tmp_path / "metrics.json")
    assert json.loads(out.read_text())["final_loss"] is None  # strict JSON, no NaN literal


def test_zero_loss_is_a_value(tmp_path):
    summary = summarize_file(write_lines(tmp_path / "m.jsonl", [step(1, 1.0), step(2, 0.0)]))
    assert summary.final_loss == 0.0
    assert summary.min_loss == 0.0
    assert summary.perplexity == 1.0


def test_plain_loss_key_and_validation_lines(tmp_path):
    lines = [{"step": 1, "loss": 4.0}, {"step": 1, "val_loss": 0.1}, {"step": 2, "loss": 3.0}]
    summary = summarize_file(write_lines(tmp_path / "m.jsonl", lines))
    assert (summary.final_loss, summary.min_loss, summary.steps) == (3.0, 3.0, 2)


def test_torn_last_line_is_skipped(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", [step(1, 2.0), step(2, 1.0)])
    with path.open("a") as handle:
        handle.write('{"step": 3, "avg_lo')
    summary = summarize_file(path)
    assert (summary.final_loss, summary.steps, summary.skipped_lines) == (1.0, 2, 1)


def test_perplexity_is_capped_like_the_original():
    assert perplexity(50.0) == pytest.approx(math.exp(10))
    assert perplexity(None) is None


def test_empty_file(tmp_path):
    summary = summarize_file(write_lines(tmp_path / "m.jsonl", [HPARAMS]))
    assert (summary.final_loss, summary.min_loss, summary.steps) == (None, None, 0)


def test_the_smoothed_final_loss_is_the_debiased_ema_and_the_raw_last_step_stays_beside_it(tmp_path):
    losses = [2.0, 1.0, 1.5, None, float("nan"), 0.5]
    smoothed = smooth(losses)
    # By hand: EMA with weight w over the finite values, divided by 1 - w**n.
    w, average, expected = SMOOTHING_WEIGHT, 0.0, []
    for n, loss in enumerate([2.0, 1.0, 1.5, 0.5], start=1):
        average = w * average + (1 - w) * loss
        expected.append(average / (1 - w**n))
    assert smoothed[0] == pytest.approx(2.0)  # debiased: the first point is its own value
    assert [smoothed[i] for i in (0, 1, 2, 5)] == pytest.approx(expected)
    assert smoothed[3] is None and smoothed[4] is None  # gaps stay gaps
    path = write_lines(
        tmp_path / "m.jsonl", [HPARAMS, *(step(n, loss) for n, loss in enumerate([3.0, 2.0, 1.0, 4.0], 1))]
    )
    summary = summarize_file(path)
    assert summary.final_loss == 4.0  # the last (maybe partial) batch, as logged
    assert summary.final_loss_smoothed == pytest.approx(smooth([3.0, 2.0, 1.0, 4.0])[-1])
    assert summary.min_loss < summary.final_loss_smoothed < summary.final_loss

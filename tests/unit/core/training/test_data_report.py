"""The data report (counts by reason, histogram, percentiles, suggestion) and the gate on dropped samples,
built from instructlab-training's processing of samples whose token length is known."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.errors import DatasetError
from airflow_provider_sft.core.training.data_processing import process_chat_data
from airflow_provider_sft.core.training.data_report import (
    HISTOGRAM_BINS,
    DataGateError,
    build_report,
    check_dropped,
    histogram,
    suggest_max_seq_len,
)
from tests.unit.core.training.sized_samples import sized_sample

MAX_SEQ_LEN = 64
TOO_SHORT = [11, 15, 19]  # under instructlab's minimum of 20 tokens
KEPT = [20, 21, 30, 40, 50, 63]  # 20 is kept, and so is max_seq_len - 1
TOO_LONG = [64, 71]  # at or over max_seq_len
CANARY = "CANARY-zq7"  # the question of every sample: no report or error may carry it


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def processed(tmp_path_factory, tiny_model, tokenizer):
    """Every group interleaved; the samples long enough carry the canary (the short ones cannot)."""
    root = tmp_path_factory.mktemp("report")
    lengths = [71, 20, 11, 40, 64, 15, 21, 63, 19, 30, 50]
    assert sorted(lengths) == sorted(TOO_SHORT + KEPT + TOO_LONG)
    rows = [sized_sample(tokenizer, n, "q" if n < 20 else CANARY) for n in lengths]
    dataset = root / "data.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return process_chat_data(dataset, root / "out", model_path=str(tiny_model), max_seq_len=MAX_SEQ_LEN)


def report_of(processed, **overrides):
    values = {"max_seq_len": MAX_SEQ_LEN, "effective_batch_size": 4, "num_epochs": 3, **overrides}
    return build_report(processed, **values)


def test_every_sample_is_measured_and_counted_by_reason(processed):
    assert sorted(processed.lengths) == sorted(TOO_SHORT + KEPT + TOO_LONG)
    report = report_of(processed)
    assert report.input_samples == 11
    assert report.kept_samples == len(KEPT) == 6
    assert report.dropped_too_short == len(TOO_SHORT)
    assert report.dropped_too_long == len(TOO_LONG)
    assert report.dropped_samples == 5 and report.dropped_fraction == pytest.approx(5 / 11)
    assert report.max_sample_tokens == 71  # the longest input, dropped or not
    assert report.total_tokens == sum(KEPT)
    assert report.steps_per_epoch == math.ceil(6 / 4) == 2 and report.total_steps == 6
    assert report.to_dict()["dropped_samples"] == 5


def test_the_counted_tokens_are_those_the_written_data_holds(processed):
    with open(processed.processed_path) as written:
        rows = [json.loads(line) for line in written]
    assert len(rows) == 6 and processed.processed_path.endswith(c.PROCESSED_DATA_FILE)
    report = report_of(processed)
    assert report.total_tokens == sum(row["len"] for row in rows)
    label_tokens = sum(sum(1 for label in row["labels"] if label != -100) for row in rows)
    assert 0 < report.label_tokens == label_tokens < report.total_tokens  # the prompt is masked


def test_the_histogram_holds_every_input_sample_in_its_bin(processed):
    report = report_of(processed)
    edges, counts = report.histogram.edges, report.histogram.counts
    assert sum(counts) == report.input_samples == 11
    assert len(edges) == len(counts) + 1 and len(counts) <= HISTOGRAM_BINS
    assert edges[0] == 0 and edges[-1] > report.max_sample_tokens
    widths = {b - a for a, b in itertools.pairwise(edges)}
    assert len(widths) == 1  # equal bins
    expected = [sum(1 for n in processed.lengths if a <= n < b) for a, b in itertools.pairwise(edges)]
    assert counts == expected


def test_the_histogram_spans_the_data_in_at_most_its_bins():
    lengths = [20, 4095, 1000, 1000]
    shape = histogram(lengths)
    assert len(shape.counts) <= HISTOGRAM_BINS and sum(shape.counts) == 4
    assert shape.edges[0] == 0 and shape.edges[-1] > 4095
    assert histogram([]).counts == [0]  # nothing measured: one empty bar, no error


def test_the_report_round_trips_through_its_dict(processed):
    report = report_of(processed)
    assert type(report).from_dict(json.loads(json.dumps(report.to_dict()))) == report


@pytest.mark.parametrize("seed", range(5))
def test_the_suggested_max_seq_len_is_the_smallest_that_keeps_99_percent(seed):
    rng = random.Random(seed)
    lengths = sorted(rng.randint(20, 3000) for _ in range(rng.randint(50, 500)))
    suggestion = suggest_max_seq_len(lengths)

    def kept(limit):  # instructlab keeps 20 <= n < max_seq_len
        return sum(1 for n in lengths if n < limit) / len(lengths)

    assert kept(suggestion) >= 0.99 and kept(suggestion - 1) < 0.99


def test_the_suggestion_ignores_samples_too_short_to_keep_at_any_length():
    long_enough = list(range(20, 120))  # 100 samples
    assert suggest_max_seq_len(long_enough) == 119  # keeps 99 of them
    assert suggest_max_seq_len(sorted([1, 2, 3, 5, 8] * 20 + long_enough)) == 119
    assert suggest_max_seq_len([3, 10]) == 0  # nothing to keep


def test_the_report_suggests_a_max_seq_len_over_the_longest_kept(processed):
    report = report_of(processed)
    long_enough = sorted(n for n in processed.lengths if n >= 20)
    assert report.suggested_max_seq_len == suggest_max_seq_len(long_enough) == 72  # keeps the 71
    assert report.percentiles["p50"] in processed.lengths and report.percentiles["p99"] == 71


def gated(processed, *, kept: int, short: int, long: int):
    return dataclasses.replace(
        report_of(processed),
        input_samples=kept + short + long,
        kept_samples=kept,
        dropped_too_short=short,
        dropped_too_long=long,
    )


def test_the_gate_passes_at_and_under_the_fraction(processed):
    check_dropped(gated(processed, kept=98, short=1, long=1), 0.02)  # exactly 2%
    check_dropped(gated(processed, kept=99, short=0, long=1), 0.02)
    check_dropped(gated(processed, kept=100, short=0, long=0), 0.0)


def test_the_gate_stops_a_run_that_would_lose_more(processed):
    with pytest.raises(DataGateError) as caught:
        check_dropped(gated(processed, kept=97, short=1, long=2), 0.02)
    message = str(caught.value)
    assert isinstance(caught.value, DatasetError)
    assert "lose 3 of 100 samples (3.0%), more than max_dropped_fraction=0.02 allows" in message
    assert f"2 are at or over max_seq_len={MAX_SEQ_LEN} tokens (longest 71)" in message
    assert "max_seq_len=72 would keep 99%" in message
    assert "1 is under instructlab-training's fixed minimum of 20 tokens" in message
    assert "Raise max_dropped_fraction to train on the 97 kept samples anyway" in message


def test_the_gate_names_the_field_it_was_given(processed):
    with pytest.raises(DataGateError, match=r"more than data_gate=0\.01 allows.*Raise data_gate"):
        check_dropped(gated(processed, kept=90, short=0, long=10), 0.01, field="data_gate")


def test_no_sample_left_fails_whatever_the_fraction(processed):
    with pytest.raises(DataGateError, match="No sample is left to train on"):
        check_dropped(gated(processed, kept=0, short=0, long=5), 1.0)


def test_the_report_and_the_gate_carry_no_sample_text(processed):
    report = report_of(processed)
    with pytest.raises(DataGateError) as caught:
        check_dropped(report, 0.02)  # the real 5 of 11 dropped
    assert "lose 5 of 11 samples" in str(caught.value)
    for text in (str(caught.value), report.summary(), json.dumps(report.to_dict())):
        assert CANARY not in text and "1 1 1" not in text


def test_a_reused_report_takes_the_training_runs_schedule(processed):
    """Batch size and epochs are not in the fingerprint: the pod recounts the steps for its own."""
    report = gated(processed, kept=100, short=0, long=0)
    rescheduled = report.for_schedule(effective_batch_size=16, num_epochs=3)
    assert (rescheduled.steps_per_epoch, rescheduled.total_steps) == (7, 21)  # ceil(100 / 16) = 7
    assert rescheduled.histogram == report.histogram and rescheduled.kept_samples == 100

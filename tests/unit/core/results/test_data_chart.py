"""The token-length histogram: which bars are drawn as dropped, and where max_seq_len is."""

from __future__ import annotations

from airflow_provider_sft.core.results.data_chart import build_data_figure
from airflow_provider_sft.core.training.data_processing import ProcessedData
from airflow_provider_sft.core.training.data_report import DataReport, build_report


def report(lengths: list[int], max_seq_len: int) -> DataReport:
    kept = [n for n in lengths if 20 <= n < max_seq_len]
    processed = ProcessedData(lengths, len(kept), sum(kept), sum(kept), "/ws/runs/r/data/data.jsonl")
    return build_report(processed, max_seq_len=max_seq_len, effective_batch_size=4, num_epochs=1)


def bars(figure, name: str) -> list[tuple[float, float, int]]:
    """(left edge, right edge, count) of each bar of the trace ``name``, counts over zero."""
    (trace,) = [t for t in figure.data if t.name == name]
    return [(x - w / 2, x + w / 2, y) for x, w, y in zip(trace.x, trace.width, trace.y, strict=True) if y]


def test_bars_at_or_over_max_seq_len_and_under_the_minimum_are_the_dropped_ones():
    lengths = [5] * 2 + [50] * 10 + [90] * 4 + [150] * 3 + [199]
    figure = build_data_figure(report(lengths, max_seq_len=100))
    dropped = bars(figure, "dropped")
    assert sum(n for *_, n in dropped) == 2 + 3 + 1  # every too-long and too-short sample
    assert all(hi <= 20 or lo >= 100 for lo, hi, _ in dropped)
    assert sum(n for *_, n in bars(figure, "kept")) == 14
    (line,) = figure.layout.shapes
    assert line.x0 == line.x1 == 100
    assert [a.text for a in figure.layout.annotations] == ["max_seq_len 100"]


def test_a_max_seq_len_past_every_sample_is_still_on_the_chart_and_nothing_is_drawn_dropped():
    figure = build_data_figure(report([30, 40, 60], max_seq_len=4096))
    assert [t.name for t in figure.data] == ["kept"]  # no "dropped" legend over empty bins
    assert figure.layout.xaxis.range[1] > 4096

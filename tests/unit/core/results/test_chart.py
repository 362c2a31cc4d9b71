"""The loss chart is one offline HTML file holding the data."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from airflow_provider_sft.core.results.chart import downsample, write_loss_chart
from airflow_provider_sft.core.results.metrics import StepRecord, smooth, summarize


def records(n, spike_at=None):
    out = []
    for i in range(1, n + 1):
        loss = 5.0 / (1 + i / 100)
        if i == spike_at:
            loss = 99.0
        out.append(StepRecord(i, 0, loss, 1e-5 * (1 - i / (n + 1)), i * 8, 100, 10.0, None))
    return out


def plotly_data(html: str) -> list[dict]:
    match = re.search(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\])\s*,\s*\{', html, re.S)
    assert match, "no Plotly.newPlot call in the HTML"
    return json.loads(match.group(1))


def trace_values(values) -> list[float]:
    if isinstance(values, list):
        return values
    import base64  # plotly may encode arrays as typed base64 blobs

    return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()


def test_chart_is_self_contained_and_holds_the_data(tmp_path):
    recs = records(40)
    path = write_loss_chart(recs, tmp_path / "loss_chart.html", summary=summarize(recs))
    html = path.read_text()
    assert not re.search(r"<script[^>]+src=[\"']?https?:", html, re.I)
    assert "plotly.js v" in html or "plotly.js" in html  # the library itself is inlined
    traces = plotly_data(html)
    names = [t["name"] for t in traces]
    assert names == ["loss", "loss (smoothed, EMA 0.9)", "learning rate"]
    ys, smoothed = (trace_values(trace["y"]) for trace in traces[:2])
    assert ys[0] == recs[0].loss and ys[-1] == recs[-1].loss
    assert smoothed == pytest.approx(smooth([r.loss for r in recs]))  # the EMA of metrics.smooth
    assert "final loss" in html
    assert not list(tmp_path.glob(".*.tmp"))


def test_downsampling_keeps_long_runs_small_and_spikes_visible(tmp_path):
    recs = records(100_000, spike_at=54_321)
    x, y = downsample([r.step for r in recs], [r.loss for r in recs], 4000)
    assert len(x) <= 4000
    assert 99.0 in y  # the spike survives
    assert x[0] == 1 and x[-1] == 100_000
    path = write_loss_chart(recs, tmp_path / "big.html")
    small = write_loss_chart(records(10), tmp_path / "small.html")
    # The inlined plotly.js dominates; 100k steps add well under 1 MB of data on top of it.
    assert path.stat().st_size - small.stat().st_size < 1_000_000


def test_nan_losses_become_gaps(tmp_path):
    recs = [StepRecord(1, 0, 2.0, 1e-5, 1, 1, 1.0, None), StepRecord(2, 0, None, 1e-5, 2, 1, 1.0, None)]
    write_loss_chart(recs, tmp_path / "c.html")
    assert (tmp_path / "c.html").exists()


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param([], id="no-steps"),
        pytest.param([StepRecord(1, 0, None, 1e-5, 8, 100, 10.0, None)], id="no-loss"),
    ],
)
def test_a_run_without_loss_values_says_no_data_plainly(tmp_path, steps):
    """No 4.7 MB empty chart: a small page that says there is nothing to draw."""
    path = write_loss_chart(steps, tmp_path / "chart.html", summary=summarize(steps), title="SFT loss — r1")
    page = path.read_text()
    assert "No data: the run recorded no training step with a loss" in page
    assert "<title>SFT loss — r1</title>" in page
    assert "Plotly" not in page and path.stat().st_size < 4096

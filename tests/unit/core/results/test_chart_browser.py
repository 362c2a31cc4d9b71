"""The loss chart renders in a real browser with networking disabled (headless Chromium).

Proves the HTML is self-contained: plotly.js is inlined, nothing is fetched. Skipped with the
reason when Debian's chromium is absent (scripts/test.sh installs it when run as root).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess

import pytest

from airflow_provider_sft.core.results.chart import write_loss_chart
from airflow_provider_sft.core.results.metrics import StepRecord

CHROMIUM = shutil.which("chromium")
OFFLINE_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--proxy-server=127.0.0.1:9",  # any request would go nowhere
    "--host-resolver-rules=MAP * ~NOTFOUND",  # and no name resolves
    "--virtual-time-budget=5000",
]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_chart_renders_offline_in_chromium(tmp_path):
    # A jagged loss: plotly simplifies collinear points away, so a smooth curve would draw few segments.
    records = [
        StepRecord(i, 0, 5.0 / i + 0.3 * math.sin(i), 1e-5 * (1 - i / 200), i * 8, 100, 10.0, None)
        for i in range(1, 121)
    ]
    chart = write_loss_chart(records, tmp_path / "loss_chart.html")
    browser = [CHROMIUM, *OFFLINE_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [*browser, "--dump-dom", chart.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    lines = re.findall(r'<path class="js-line" d="(M[^"]+)"', dom)
    assert lines, "no line in the rendered DOM: the chart did not render offline"
    assert max(line.count("L") for line in lines) >= 100  # the loss polyline, drawn point by point
    shot = tmp_path / "chart.png"
    subprocess.run(
        [*browser, "--window-size=1200,700", f"--screenshot={shot}", chart.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 20_000  # a blank page is a few kB

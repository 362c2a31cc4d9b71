"""The Training results tab of a run that resumed: the resumes among the run's facts and on the chart."""

from __future__ import annotations

from airflow_provider_sft.plugin.results import find_results, render_page
from tests.unit.test_results_plugin import dag_run

RESUME = {"step": 12, "samples_seen": 96, "epoch": 0, "state": "epoch_0", "attempt": "<b>a2</b>"}


def test_a_resumed_run_lists_its_resumes_and_marks_them_on_the_one_curve():
    results = dag_run("r1", "r2")
    results["export_model"]["metrics"]["resumes"] = [RESUME]
    page = render_page("train", *find_results(results, "train"))
    assert '<tr id="sft-resumes"><th>Resumed</th>' in page
    assert "resumed after step 12 from epoch_0 (samples 96, attempt &lt;b&gt;a2&lt;/b&gt;)" in page
    assert "<b>a2</b>" not in page  # escaped, wherever it is shown
    assert '"x0":12' in page.replace(" ", "")  # the chart's vertical line at the resume


def test_a_run_that_never_resumed_has_no_resume_row():
    page = render_page("train", *find_results(dag_run("r1", "r2"), "train"))
    assert "sft-resumes" not in page and '"x0"' not in page

"""A real CPU run of the tiny model through the local backend, exported by the export task: its
efficiency in ``metrics.json``, on the chart page and in both summary lines, against the run's own
metrics file read here independently."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import ModelCard

import airflow_provider_sft
from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends import JobStatus
from airflow_provider_sft.core.backends.kubernetes.program import program_digest
from airflow_provider_sft.core.backends.local import LocalProcessBackend
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.files import sha256_file
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.results.model_card import MODEL_CARD_FILE
from airflow_provider_sft.core.run import TrainingRun
from airflow_provider_sft.core.sample_data import bundled_dataset_path
from airflow_provider_sft.operators.export import ExportModelOperator, LossChartOperator
from tests.unit.core.results.test_efficiency import TINY_N

CPU_NA = "a CPU run: there is no GPU"


class _TableRows(HTMLParser):
    """The rows of ``<table id="sft-efficiency">``: figure -> (value, note)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, tuple[str, ...]] = {}
        self._inside = False
        self._cells: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and ("id", "sft-efficiency") in attrs:
            self._inside = True
        elif self._inside and tag == "tr":
            self._cells = []
        elif self._inside and tag in ("th", "td") and self._cells is not None:
            self._cells.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._inside = False
        elif tag == "tr" and self._cells:
            self.rows[self._cells[0]] = tuple(self._cells[1:])
            self._cells = None

    def handle_data(self, data: str) -> None:
        if self._cells:
            self._cells[-1] += data


def _independent_figures(metrics_file: Path) -> tuple[float, float, datetime, int, int]:
    """tokens/s, as the test reads the JSONL itself: steps 2..N's tokens over first to last step."""
    steps = [
        row
        for row in map(json.loads, metrics_file.read_text().splitlines())
        if "step" in row and "avg_loss" in row
    ]
    first, last = (datetime.fromisoformat(steps[i]["timestamp"]) for i in (0, -1))
    tokens = sum(row["num_tokens_rank0"] for row in steps[1:])
    total_tokens = sum(row["num_tokens_rank0"] for row in steps)
    return (
        tokens / (last - first).total_seconds(),
        (last - first).total_seconds(),
        first.replace(tzinfo=timezone.utc),
        total_tokens,
        steps[-1]["samples_seen"],
    )


@pytest.mark.slow
def test_the_demo_run_reports_its_efficiency_in_metrics_json_the_chart_and_the_summaries(
    tiny_model, tmp_path, capsys
):
    params = {
        "base_model": str(tiny_model),
        "resource_gpu_per_worker": 0,
        "resource_cpu_per_worker": "1",
        "resource_memory_per_worker": "4Gi",
        "effective_batch_size": 16,
        "num_epochs": 2,
        "max_seq_len": 512,
        "learning_rate": 1e-3,
    }
    run = TrainingRun(
        name="demo-run",
        params=SFTParams.parse(params),
        dataset_path=str(bundled_dataset_path()),
        output_dir=str(tmp_path / c.RUNS_DIR / "demo-run"),
    )
    backend = LocalProcessBackend()
    handle = backend.submit(run)
    lines: list[str] = []
    assert backend.wait(handle, on_log=lines.append, timeout_seconds=600).status is JobStatus.SUCCEEDED
    metrics_file = Path(run.output_dir) / c.METRICS_FILE
    tokens_per_second, seconds, first_step, total_tokens, samples = _independent_figures(metrics_file)
    created = datetime.fromisoformat(handle.created or "")
    assert created.tzinfo is not None and created < first_step

    # The training process's own summary line: no job creation there, so from the run's start.
    (pod_summary,) = [line for line in lines if "summary:" in line]
    assert re.search(
        r"; \d+ tokens/s, n/a tokens/s per GPU, MFU n/a, GPU-hours n/a, cost n/a, "
        r"first step \d+s after run started$",
        pod_summary,
    ), pod_summary

    export = ExportModelOperator(
        task_id="export_model",
        training_output_dir=run.output_dir,
        workspace=str(tmp_path),
        job_created=handle.created,
        gpu_hour_cost="2.5",  # as a form or template renders it
    )
    context = {"ti": SimpleNamespace(dag_id="d", task_id="export_model", map_index=-1), "run_id": "r"}
    result = export.execute(context)

    efficiency = json.loads(Path(result["metrics_path"]).read_text())["efficiency"]
    assert efficiency == result["efficiency"]
    assert efficiency["device"] == "cpu" and efficiency["num_gpus"] is None
    assert efficiency["tokens_per_second"] == pytest.approx(tokens_per_second, rel=1e-9)
    assert efficiency["training_seconds"] == pytest.approx(seconds)
    assert efficiency["time_to_first_step_seconds"] == pytest.approx((first_step - created).total_seconds())
    assert efficiency["time_to_first_step_from"] == "job_created"
    assert efficiency["model_parameters"] == TINY_N  # from the exported model's config.json
    assert efficiency["flops_per_token"] == pytest.approx(
        6 * TINY_N + 12 * 4 * 256 * (total_tokens / samples)
    )
    assert efficiency["gpu_hour_cost"] == 2.5
    for figure in ("tokens_per_second_per_gpu", "mfu", "gpu_hours", "cost"):
        assert efficiency[figure] is None  # null in metrics.json
        assert efficiency["not_available"][figure] == CPU_NA

    # The model card names what really trained the model, from the run-facts line of the training
    # process: the program the local backend ran (the pod program's digest) and its dataset.
    card = ModelCard((Path(result["model_path"]) / MODEL_CARD_FILE).read_text())
    assert f"| Training program sha256 | {program_digest()} |" in card.text
    assert f"| Trained by airflow-provider-sft | {airflow_provider_sft.__version__} |" in card.text
    assert f"| Dataset sha256 | {sha256_file(bundled_dataset_path())} |" in card.text
    assert card.data.base_model is None  # a local directory, not a Hub id

    # The export task's summary line has them too, the first step counted from the job's creation.
    (export_summary,) = [line for line in capsys.readouterr().out.splitlines() if "summary:" in line]
    assert (
        f"; {efficiency['tokens_per_second']:.0f} tokens/s, n/a tokens/s per GPU, MFU n/a, GPU-hours n/a, "
        f"cost n/a, first step {efficiency['time_to_first_step_seconds']:.0f}s after job created"
    ) in export_summary

    chart = LossChartOperator(
        task_id="report",
        training_output_dir=run.output_dir,
        workspace=str(tmp_path),
        steps=result["steps"],
        resumes=result["resumes"],
        efficiency=result["efficiency"],
    ).execute({})
    table = _TableRows()
    table.feed(Path(chart["chart_path"]).read_text())
    assert table.rows["Device"] == ("cpu", "")
    assert table.rows["Tokens/s"] == (f"{efficiency['tokens_per_second']:,.0f}", "")
    for figure in ("Tokens/s per GPU", "MFU", "GPU-hours", "Cost"):
        assert table.rows[figure] == ("n/a", CPU_NA)
    assert table.rows["Time to first step"] == (
        f"{efficiency['time_to_first_step_seconds']:.0f}s after job created",
        "",
    )


def test_a_bad_gpu_hour_cost_stops_the_export_task_before_anything_is_published(tmp_path):
    from tests.unit.core.results.test_export import write_checkpoint

    run_dir = tmp_path / c.RUNS_DIR / "run-a"
    write_checkpoint(run_dir / c.HF_FORMAT_DIR / "samples_8")
    (run_dir / c.METRICS_FILE).write_text(json.dumps({"step": 1, "avg_loss": 1.0}) + "\n")
    export = ExportModelOperator(
        task_id="export_model", training_output_dir=str(run_dir), workspace=str(tmp_path), gpu_hour_cost="-3"
    )
    context = {"ti": SimpleNamespace(dag_id="d", task_id="export_model", map_index=-1), "run_id": "r"}
    with pytest.raises(InvalidParameterError, match=r"gpu_hour_cost: must be a number >= 0.*'-3'"):
        export.execute(context)
    assert not (run_dir / c.FINAL_MODEL_DIR).exists() and not (run_dir / c.METRICS_SUMMARY_FILE).exists()


def test_the_first_task_names_a_bad_gpu_hour_cost():
    from airflow_provider_sft.operators.validate import ValidateRunOperator

    validate = ValidateRunOperator(task_id="validate", training={}, gpu_hour_cost="free")
    assert validate.problems({}, []) == {
        "gpu_hour_cost": "must be a number >= 0 (the price of one GPU-hour), got 'free'"
    }

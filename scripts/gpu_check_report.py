"""The GPU check's report: our run against bare instructlab-training, from their metrics files.

Both runs write instructlab's metrics JSONL (ours through our entrypoint, bare through
``run_training``); every figure is read from there by the project's own readers, so the check
measures the two runs the same way the product measures a user's run:

* tokens/s (per GPU), MFU and time to the first step: :func:`compute_efficiency`, with the
  phase's start as the "job created" moment of both runs (our process's start is later than
  the phase's: the local backend's submit is counted, as a user's run counts it); for ours also
  from its own process's start (its facts line), to tell the pipeline's steps from the entrypoint;
* peak GPU memory: the largest ``cuda_mem_allocated`` a step line reports (rank 0, after the
  step, torch's allocator) and the peak the sampler saw on the device (every process, the
  allocators' caches included);
* the two loss curves side by side, by step, and their largest difference.

The ratio ours/bare of tokens/s per GPU is the check's figure; its target is
:data:`TARGET_RATIO`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_provider_sft.core.results.efficiency import compute_efficiency
from airflow_provider_sft.core.results.metrics import MetricsLog, read_metrics_log

#: Our run's tokens/s per GPU over bare instructlab-training's, at least (issue #27).
TARGET_RATIO = 0.98


@dataclass(frozen=True)
class PhaseOutcome:
    """What one phase left: how it ended, when it started (UTC ISO), its metrics file, its peak."""

    name: str
    status: str  # "completed", "failed", "timed_out" or "not_run"
    seconds: float | None
    budget_seconds: float | None
    started: str | None
    metrics_path: Path | None
    peak_device_memory_bytes: int | None = None
    detail: str = ""


def _max_allocated_gib(path: Path) -> float | None:
    """The largest ``cuda_mem_allocated`` (GiB) of the step lines, as instructlab writes them."""
    from airflow_provider_sft.core import jsonio

    peak = None
    for line in path.read_bytes().splitlines():
        try:
            row = jsonio.loads(line)
        except ValueError:
            continue
        value = row.get("cuda_mem_allocated") if isinstance(row, dict) else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            peak = value if peak is None else max(peak, value)
    return peak


def phase_figures(
    outcome: PhaseOutcome, *, model_config: Mapping[str, Any] | None, gpu_name: str | None, gpus: int
) -> dict[str, Any]:
    """One phase's figures; the efficiency's ``not_available`` says why a figure is missing."""
    figures: dict[str, Any] = {
        "status": outcome.status,
        "seconds": outcome.seconds,
        "budget_seconds": outcome.budget_seconds,
        "detail": outcome.detail,
        "peak_device_memory_bytes": outcome.peak_device_memory_bytes,
    }
    path = outcome.metrics_path
    if path is None or not path.is_file():
        figures["efficiency"] = None
        figures["steps"] = 0
        return figures
    metrics = read_metrics_log(path)
    # The same facts for both runs, from where they ran: bare instructlab writes no facts line, and
    # ours carries its own process's start, later than the phase's.
    facts = {
        **metrics.facts,
        "device": "cuda" if gpus else "cpu",
        "gpu_name": gpu_name,
        "num_nodes": 1,
        "gpus_per_node": gpus,
        "timestamp_utc_offset_seconds": metrics.facts.get(
            "timestamp_utc_offset_seconds", _local_offset(gpus)
        ),
    }
    efficiency = compute_efficiency(metrics, facts, model_config=model_config, job_created=outcome.started)
    figures["efficiency"] = efficiency.to_dict()
    # Ours also says when its own process started (its facts line): the entrypoint's share of the wait.
    figures["first_step_after_process_start_seconds"] = (
        compute_efficiency(metrics, facts, model_config=None).time_to_first_step_seconds
        if metrics.facts.get("started")
        else None
    )
    figures["steps"] = len(metrics.records)
    figures["max_cuda_mem_allocated_gib"] = _max_allocated_gib(path)
    figures["final_loss"] = metrics.records[-1].loss if metrics.records else None
    return figures


def _local_offset(gpus: int) -> float:
    """instructlab stamps its steps in local time; the CPU loop in UTC (see ``facts_record``)."""
    import time

    return 0 if not gpus else time.localtime().tm_gmtoff


def loss_curves(ours: MetricsLog | None, bare: MetricsLog | None) -> list[dict[str, Any]]:
    """``{"step", "ours", "bare"}`` for every step either run logged, in step order."""
    by_step: dict[int, dict[str, Any]] = {}
    for name, log in (("ours", ours), ("bare", bare)):
        for record in log.records if log else []:
            by_step.setdefault(record.step, {"step": record.step, "ours": None, "bare": None})[name] = (
                record.loss
            )
    return [by_step[step] for step in sorted(by_step)]


def largest_loss_difference(curves: Sequence[Mapping[str, Any]]) -> float | None:
    """The largest ``|ours - bare|`` over the steps both logged; None when none is shared."""
    differences = [
        abs(row["ours"] - row["bare"])
        for row in curves
        if isinstance(row["ours"], float) and isinstance(row["bare"], float)
    ]
    return max(differences) if differences else None


def ratio(ours: float | None, bare: float | None) -> float | None:
    return ours / bare if ours is not None and bare else None


def build_report(
    ours: PhaseOutcome,
    bare: PhaseOutcome,
    *,
    model_config: Mapping[str, Any] | None,
    gpu_name: str | None,
    gpus: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The check's JSON report (see the module's docstring); ``extra`` is kept as it is."""
    figures = {
        outcome.name: phase_figures(outcome, model_config=model_config, gpu_name=gpu_name, gpus=gpus)
        for outcome in (ours, bare)
    }

    def per_gpu(name: str) -> float | None:
        efficiency = figures[name]["efficiency"]
        return efficiency["tokens_per_second_per_gpu"] if efficiency else None

    def overall(name: str) -> float | None:
        efficiency = figures[name]["efficiency"]
        return efficiency["tokens_per_second"] if efficiency else None

    logs = {
        outcome.name: read_metrics_log(outcome.metrics_path)
        if outcome.metrics_path is not None and outcome.metrics_path.is_file()
        else None
        for outcome in (ours, bare)
    }
    curves = loss_curves(logs[ours.name], logs[bare.name])
    tokens_ratio = (
        ratio(per_gpu(ours.name), per_gpu(bare.name))
        if gpus
        else ratio(overall(ours.name), overall(bare.name))
    )
    return {
        "gpu_name": gpu_name,
        "gpus": gpus,
        "target_ratio": TARGET_RATIO,
        "tokens_per_second_ratio": tokens_ratio,  # per GPU on a GPU; overall on a CPU
        "meets_target": None if tokens_ratio is None else tokens_ratio >= TARGET_RATIO,
        "phases": figures,
        "largest_loss_difference": largest_loss_difference(curves),
        "loss_curves": curves,
        **(extra or {}),
    }


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """A few lines a person reads at the end of the log: the ratio, MFU, first step, memory."""
    lines = []
    for name, phase in report["phases"].items():
        efficiency = phase.get("efficiency") or {}
        mfu = efficiency.get("mfu")
        first = efficiency.get("time_to_first_step_seconds")
        per_gpu = efficiency.get("tokens_per_second_per_gpu") or efficiency.get("tokens_per_second")
        lines.append(
            f"{name}: {phase['status']} in {_num(phase['seconds'], '.0f')}s of {_num(phase['budget_seconds'], '.0f')}s, "
            f"{phase.get('steps', 0)} steps, {_num(per_gpu, ',.0f')} tokens/s per GPU, "
            f"MFU {_num(None if mfu is None else mfu * 100, '.2f')}%, first step after {_num(first, '.1f')}s, "
            f"max allocated {_num(phase.get('max_cuda_mem_allocated_gib'), '.2f')} GiB, device peak "
            f"{_num(None if phase.get('peak_device_memory_bytes') is None else phase['peak_device_memory_bytes'] / 2**30, '.2f')} GiB"
        )
    verdict = report["meets_target"]
    lines.append(
        f"ratio ours/bare {_num(report['tokens_per_second_ratio'], '.3f')} (target >= {report['target_ratio']}): "
        + ("n/a" if verdict is None else "met" if verdict else "NOT met")
        + f"; largest loss difference {_num(report['largest_loss_difference'], '.4g')}"
    )
    return lines


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)

"""Read instructlab-training's metrics JSONL and summarise it.

The file mixes an hparams line, per-step lines and (with validation) ``val_loss``
lines. Rules:

* a validation line is instructlab 0.16.2's ``{"val_loss", "val_num_tokens", "step", "timestamp"}``
  (the CPU loop writes the same): the trace keeps one per step (the last line wins), a
  non-finite loss as ``None``; ``validation_loss`` is the latest, ``best_validation_loss`` the
  lowest with its step. A resume marker after step S drops the validation lines of steps
  after S read before it: they were computed by the attempt the resume abandoned;
* a step logged twice (a resumed run) counts once: the last line wins;
* ``avg_loss`` (instructlab) or ``loss`` is the loss; 0.0 is a value;
* NaN/inf losses are kept in the trace (the chart shows gaps) but excluded from
  ``min_loss``; a NaN final loss is reported as ``None`` with a count;
* a torn last line (the writer was killed mid-line) is skipped, not fatal;
* a resumed run writes a marker line ``{"resumed": true, "step": S, "samples_seen": N, "epoch":
  E, "state": "epoch_E", "attempt": "..."}`` after its steps up to S (preemption, task retry);
  the steps before and after are one run, one curve, and the markers are kept in order as
  ``resumes`` (``metrics.json``, the chart's vertical lines). ``runtime_seconds`` adds up the
  time spent training in each stretch, not the time the run waited between them;
* the last step's loss is one (often partial) batch: ``final_loss_smoothed``, the
  debiased exponential moving average TensorBoard and W&B draw (weight
  :data:`SMOOTHING_WEIGHT`), is reported beside it, and the chart draws the same line.

JSON lines written by Python's ``json`` may contain ``NaN``/``Infinity``, which
``orjson`` rejects; those lines fall back to ``json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.files import atomic_write_bytes

LOSS_KEYS = ("avg_loss", "loss")

#: The marker key of the run-facts hparams line (:func:`~airflow_provider_sft.core.results.efficiency.facts_record`).
FACTS_KEY = "sft_run_facts"

#: The EMA weight of the smoothed loss: each step keeps 90% of the average so far.
SMOOTHING_WEIGHT = 0.9


@dataclass(frozen=True)
class StepRecord:
    step: int
    epoch: int | None
    loss: float | None
    lr: float | None
    samples_seen: int | None
    tokens: int | None
    throughput: float | None
    timestamp: str | None


@dataclass(frozen=True)
class ValidationRecord:
    """One validation line: the held-out loss at ``step``, over ``val_num_tokens`` loss-counted tokens."""

    step: int
    val_loss: float | None  # None when not finite (metrics.json is strict JSON)
    val_num_tokens: int | None


#: The keys of a resume marker as ``metrics.json`` keeps it.
RESUME_KEYS = ("step", "samples_seen", "epoch", "state", "attempt")


@dataclass(frozen=True)
class MetricsLog:
    """What a metrics JSONL holds: the steps (one per step), the resumes, the unreadable lines,
    and the last run-facts line (the latest attempt's: where it ran; empty when there is none)."""

    records: list[StepRecord]
    skipped_lines: int
    resumes: list[dict[str, Any]] = field(default_factory=list)
    validation: list[ValidationRecord] = field(default_factory=list)  # in step order
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricsSummary:
    final_loss: float | None  # the last step's raw loss
    final_loss_smoothed: float | None  # the loss EMA at the last step (see smooth())
    min_loss: float | None
    perplexity: float | None
    steps: int
    epochs: int
    total_tokens: int
    samples_seen: int
    avg_throughput_samples_per_second: float | None
    runtime_seconds: float | None
    non_finite_losses: int
    skipped_lines: int
    resumes: list[dict[str, Any]] = field(default_factory=list)  # RESUME_KEYS each, in file order
    validation_loss: float | None = None  # the latest validation loss (None: no validation)
    validation_step: int | None = None
    best_validation_loss: float | None = None  # the lowest, and the step it was computed at
    best_validation_step: int | None = None
    validation: list[dict[str, Any]] = field(default_factory=list)  # ValidationRecord fields, by step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _loads(line: bytes) -> Any:
    try:
        return jsonio.loads(line)
    except ValueError:
        return json.loads(line)  # NaN / Infinity literals; raises on a torn line


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _resume_mark(row: dict[str, Any]) -> dict[str, Any] | None:
    """A resume marker line as ``metrics.json`` keeps it; None for any other line."""
    if row.get("resumed") is not True or isinstance(row.get("step"), bool):
        return None
    try:
        step = int(row["step"])
    except (KeyError, TypeError, ValueError):
        return None
    return {"step": step, **{key: row.get(key) for key in RESUME_KEYS[1:]}}


def _validation_record(row: dict[str, Any]) -> ValidationRecord | None:
    """A validation line (``val_loss`` and ``step``) as a record; None for any other line."""
    if "val_loss" not in row or isinstance(row.get("step"), bool):
        return None
    try:
        step = int(row["step"])
    except (KeyError, TypeError, ValueError):
        return None
    loss = _number(row["val_loss"])
    tokens = row.get("val_num_tokens")
    return ValidationRecord(
        step=step,
        val_loss=loss if loss is not None and math.isfinite(loss) else None,
        val_num_tokens=tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None,
    )


def best_validation(validation: Sequence[ValidationRecord]) -> ValidationRecord | None:
    """The lowest finite validation loss (the earliest step of equals): the chart's marked point."""
    finite = [record for record in validation if record.val_loss is not None]
    return min(finite, key=lambda record: (record.val_loss, record.step)) if finite else None


def read_step_records(path: str | Path) -> tuple[list[StepRecord], int]:
    """Per-step records in step order (last line per step wins) and the number of unreadable lines."""
    metrics = read_metrics_log(path)
    return metrics.records, metrics.skipped_lines


def read_metrics_log(path: str | Path) -> MetricsLog:
    """The steps in step order (last line per step wins), the resume markers, the unreadable lines."""
    by_step: dict[int, StepRecord] = {}
    validation: dict[int, ValidationRecord] = {}
    resumes: list[dict[str, Any]] = []
    facts: dict[str, Any] = {}
    skipped = 0
    with Path(path).open("rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                row = _loads(line)
            except ValueError:
                skipped += 1
                continue
            if isinstance(row, dict) and row.get(FACTS_KEY) is True:
                facts = row
                continue
            if not isinstance(row, dict) or row.get("hparams") or "step" not in row:
                continue
            if (mark := _resume_mark(row)) is not None:
                resumes.append(mark)
                validation = {step: v for step, v in validation.items() if step <= mark["step"]}
                continue
            if (held_out := _validation_record(row)) is not None:
                validation[held_out.step] = held_out
                continue
            loss_key = next((key for key in LOSS_KEYS if key in row), None)
            if loss_key is None:
                continue  # validation or other non-training line
            step = int(row["step"])
            by_step[step] = StepRecord(
                step=step,
                epoch=row.get("epoch"),
                loss=_number(row[loss_key]),
                lr=_number(row.get("lr")),
                samples_seen=row.get("samples_seen"),
                tokens=row.get("num_tokens_rank0") or row.get("num_tokens"),
                throughput=_number(row.get("overall_throughput")),
                timestamp=row.get("timestamp"),
            )
    return MetricsLog(
        [by_step[step] for step in sorted(by_step)],
        skipped,
        resumes,
        [validation[s] for s in sorted(validation)],
        facts,
    )


def timed_stretches(
    records: Sequence[StepRecord], resumes: Sequence[dict[str, Any]] = ()
) -> list[list[StepRecord]]:
    """The steps with a timestamp, split where the run resumed: the time between two stretches
    was spent waiting (a preemption, a retry), not training. Empty stretches are left out."""
    cuts = sorted({mark["step"] for mark in resumes})
    stretches: list[list[StepRecord]] = [[] for _ in range(len(cuts) + 1)]
    for record in records:
        if record.timestamp:
            stretches[sum(1 for cut in cuts if record.step > cut)].append(record)
    return [stretch for stretch in stretches if stretch]


def _runtime_seconds(records: list[StepRecord], resumes: Sequence[dict[str, Any]] = ()) -> float | None:
    """First to last step's timestamp, within each stretch between resumes, added up."""
    from datetime import datetime

    stretches = timed_stretches(records, resumes)
    if sum(len(stretch) for stretch in stretches) < 2:
        return None
    try:
        return sum(
            (
                datetime.fromisoformat(stretch[-1].timestamp or "")
                - datetime.fromisoformat(stretch[0].timestamp or "")
            ).total_seconds()
            for stretch in stretches
        )
    except ValueError:
        return None


def perplexity(loss: float | None) -> float | None:
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(min(loss, c.PERPLEXITY_LOSS_CAP))


class LossSmoother:
    """The debiased exponential moving average of a loss, one step at a time.

    One implementation for the whole record (:func:`smooth`) and for a run in progress (the
    progress tracker), so the live smoothed loss is the one the chart later draws.
    """

    def __init__(self, weight: float = SMOOTHING_WEIGHT):
        self.weight = weight
        self._average, self._seen = 0.0, 0

    def add(self, loss: float | None) -> float | None:
        """The smoothed loss after ``loss``; ``None`` for a missing or non-finite one (skipped)."""
        if loss is None or not math.isfinite(loss):
            return None
        self._seen += 1
        self._average = self.weight * self._average + (1 - self.weight) * loss
        return self._average / (1 - self.weight**self._seen)


def smooth(losses: list[float | None], weight: float = SMOOTHING_WEIGHT) -> list[float | None]:
    """Debiased exponential moving average, as TensorBoard's smoothing slider computes it.

    The bias correction (dividing by ``1 - weight**n``) keeps the first steps at their own
    scale instead of pulling them towards 0. Missing and non-finite losses are skipped: the
    average carries over them, and their own point stays ``None``.
    """
    smoother = LossSmoother(weight)
    return [smoother.add(loss) for loss in losses]


def summarize(
    records: list[StepRecord],
    *,
    skipped_lines: int = 0,
    resumes: Sequence[dict[str, Any]] = (),
    validation: Sequence[ValidationRecord] = (),
) -> MetricsSummary:
    finite = [r.loss for r in records if r.loss is not None and math.isfinite(r.loss)]
    final = records[-1].loss if records else None
    final = final if final is not None and math.isfinite(final) else None
    smoothed = [value for value in smooth([r.loss for r in records]) if value is not None]
    throughputs = [r.throughput for r in records if r.throughput is not None and math.isfinite(r.throughput)]
    samples = [r.samples_seen for r in records if r.samples_seen is not None]
    epochs = {r.epoch for r in records if r.epoch is not None}
    latest = validation[-1] if validation else None
    best = best_validation(validation)
    return MetricsSummary(
        final_loss=final,
        final_loss_smoothed=smoothed[-1] if smoothed else None,
        min_loss=min(finite) if finite else None,
        perplexity=perplexity(final),
        steps=len(records),
        epochs=len(epochs),
        total_tokens=sum(r.tokens or 0 for r in records),
        samples_seen=max(samples) if samples else 0,
        avg_throughput_samples_per_second=sum(throughputs) / len(throughputs) if throughputs else None,
        runtime_seconds=_runtime_seconds(records, resumes),
        non_finite_losses=sum(1 for r in records if r.loss is not None and not math.isfinite(r.loss)),
        skipped_lines=skipped_lines,
        resumes=[dict(mark) for mark in resumes],
        validation_loss=latest.val_loss if latest else None,
        validation_step=latest.step if latest else None,
        best_validation_loss=best.val_loss if best else None,
        best_validation_step=best.step if best else None,
        validation=[asdict(record) for record in validation],
    )


def summarize_log(metrics: MetricsLog) -> MetricsSummary:
    return summarize(
        metrics.records,
        skipped_lines=metrics.skipped_lines,
        resumes=metrics.resumes,
        validation=metrics.validation,
    )


def summarize_file(path: str | Path) -> MetricsSummary:
    return summarize_log(read_metrics_log(path))


def write_summary(
    summary: MetricsSummary,
    path: str | Path,
    *,
    data: dict[str, Any] | None = None,
    efficiency: dict[str, Any] | None = None,
) -> Path:
    """Write ``metrics.json`` (strict JSON: no NaN), with the data report under ``data`` and the
    efficiency figures (:mod:`efficiency`) under ``efficiency`` when known."""
    extra = {key: value for key, value in (("data", data), ("efficiency", efficiency)) if value}
    return atomic_write_bytes(path, jsonio.dumps({**summary.to_dict(), **extra}, indent=True))

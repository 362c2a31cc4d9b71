"""What the processed data holds, and the gate that stops a run which would lose too much of it.

Built from :class:`~airflow_provider_sft.core.training.data_processing.ProcessedData` on the CPU
step before any GPU is asked for (and again in the pod when it had to process the data itself):
samples in, kept, dropped by reason, a token-length histogram with ``max_seq_len`` marked, the
tokens the loss counts, and the optimizer steps the run will take. The report is a plain dict
in XCom, in ``metrics.json`` and in the Training results tab.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.errors import DatasetError, InvalidParameterError
from airflow_provider_sft.core.training.data_processing import MIN_SAMPLE_TOKENS, ProcessedData

#: The share of samples a suggested ``max_seq_len`` keeps.
SUGGESTION_KEEPS = 0.99
HISTOGRAM_BINS = 40
#: The prepare task's XCom of the report, pushed before its gate: a run it stops still shows it.
REPORT_XCOM_KEY = "report"


class DataGateError(DatasetError):
    """The run would drop more of its samples than ``max_dropped_fraction`` allows."""


@dataclass(frozen=True)
class Histogram:
    """Token lengths in equal bins ``[edges[i], edges[i+1])``."""

    edges: list[int]
    counts: list[int]


@dataclass(frozen=True)
class DataReport:
    input_samples: int
    kept_samples: int
    dropped_too_short: int  # under instructlab's 20-token minimum
    dropped_too_long: int  # at or over max_seq_len
    total_tokens: int
    label_tokens: int
    max_sample_tokens: int  # the longest input sample, kept or not
    max_seq_len: int
    min_seq_len: int
    suggested_max_seq_len: int  # the smallest max_seq_len that keeps SUGGESTION_KEEPS of the samples
    effective_batch_size: int
    num_epochs: int
    steps_per_epoch: int
    total_steps: int
    histogram: Histogram
    processed_path: str
    percentiles: dict[str, int] = field(default_factory=dict)

    @property
    def dropped_samples(self) -> int:
        return self.dropped_too_short + self.dropped_too_long

    @property
    def dropped_fraction(self) -> float:
        return self.dropped_samples / self.input_samples if self.input_samples else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "dropped_samples": self.dropped_samples}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataReport:
        values = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        values["histogram"] = Histogram(**data["histogram"])
        return cls(**values)

    def for_schedule(self, effective_batch_size: int, num_epochs: int) -> DataReport:
        """This report with the steps of another batch size and epoch count (neither is in the
        fingerprint: they change the schedule, not the processed data)."""
        per_epoch = math.ceil(self.kept_samples / effective_batch_size)
        return replace(
            self,
            effective_batch_size=effective_batch_size,
            num_epochs=num_epochs,
            steps_per_epoch=per_epoch,
            total_steps=per_epoch * num_epochs,
        )

    def summary(self) -> str:
        """One line for a log: counts and steps, no sample content."""
        return (
            f"{self.kept_samples}/{self.input_samples} samples kept, {self.dropped_samples} dropped "
            f"({self.dropped_too_short} under {self.min_seq_len} tokens, {self.dropped_too_long} at or over "
            f"max_seq_len={self.max_seq_len}); {self.total_tokens} tokens, {self.label_tokens} counted by the "
            f"loss; longest sample {self.max_sample_tokens} tokens (p50 {self.percentiles.get('p50', 0)}, "
            f"p99 {self.percentiles.get('p99', 0)}); {self.steps_per_epoch} optimizer step(s) per epoch x "
            f"{self.num_epochs} = {self.total_steps}"
        )


def build_report(
    processed: ProcessedData, *, max_seq_len: int, effective_batch_size: int, num_epochs: int
) -> DataReport:
    lengths = processed.lengths
    too_short = sum(1 for n in lengths if n < MIN_SAMPLE_TOKENS)
    too_long = sum(1 for n in lengths if n >= max_seq_len)
    steps_per_epoch = math.ceil(processed.kept_samples / effective_batch_size)
    ordered = sorted(lengths)
    return DataReport(
        input_samples=len(lengths),
        kept_samples=processed.kept_samples,
        dropped_too_short=too_short,
        dropped_too_long=too_long,
        total_tokens=processed.total_tokens,
        label_tokens=processed.label_tokens,
        max_sample_tokens=ordered[-1] if ordered else 0,
        max_seq_len=max_seq_len,
        min_seq_len=MIN_SAMPLE_TOKENS,
        suggested_max_seq_len=suggest_max_seq_len(ordered),
        effective_batch_size=effective_batch_size,
        num_epochs=num_epochs,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * num_epochs,
        histogram=histogram(lengths),
        processed_path=processed.processed_path,
        percentiles={f"p{q}": _percentile(ordered, q / 100) for q in (50, 90, 99)},
    )


def _percentile(ordered: list[int], share: float) -> int:
    """The smallest length at or under which ``share`` of the samples fall (nearest rank)."""
    if not ordered:
        return 0
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def suggest_max_seq_len(ordered: list[int]) -> int:
    """The smallest ``max_seq_len`` that keeps 99% of the samples long enough to be kept at all.

    A sample is kept when its length is under ``max_seq_len``: one more than the 99th percentile.
    """
    long_enough = [n for n in ordered if n >= MIN_SAMPLE_TOKENS]
    return _percentile(long_enough, SUGGESTION_KEEPS) + 1 if long_enough else 0


def histogram(lengths: list[int], bins: int = HISTOGRAM_BINS) -> Histogram:
    """Equal-width bins from 0 over every length (the dropped ones included).

    The bins span the data, not ``max_seq_len``: a limit of 4096 over samples of 100 tokens
    would leave every bar in the first bin. The chart draws ``max_seq_len`` as a line, past the
    last bar when nothing reaches it.
    """
    top = max(lengths, default=0) + 1
    width = max(1, math.ceil(top / bins))
    counts = [0] * math.ceil(top / width)
    for n in lengths:
        counts[n // width] += 1
    return Histogram(edges=[i * width for i in range(len(counts) + 1)], counts=counts)


def checked_max_dropped_fraction(value: Any, *, field: str = "max_dropped_fraction") -> float:
    """A share of the samples, 0 to 1 (a number or its text, as a form or ``conf`` gives it);
    empty (None, ``""``) is the default, as for every optional parameter."""
    if value is None or value == "":
        return c.DEFAULT_MAX_DROPPED_FRACTION
    if isinstance(value, bool):  # a switch is not a share
        value = str(value)
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = float("nan")
    if not 0.0 <= fraction <= 1.0:  # NaN fails too
        raise InvalidParameterError(
            {field: f"must be a number from 0 to 1 (a share of the samples), got {value!r}"}
        )
    return fraction


def _are(count: int) -> str:
    return f"{count} {'is' if count == 1 else 'are'}"


def check_dropped(
    report: DataReport, max_dropped_fraction: float, *, field: str = "max_dropped_fraction"
) -> None:
    """Stop the run, before any training job exists, when it would lose too many samples.

    The message says how many, why, and what would keep them; it names no sample's content.
    """
    if report.kept_samples and report.dropped_fraction <= max_dropped_fraction:
        return
    reasons = []
    if report.dropped_too_long:
        reasons.append(
            f"{_are(report.dropped_too_long)} at or over max_seq_len={report.max_seq_len} tokens (longest "
            f"{report.max_sample_tokens}): max_seq_len={report.suggested_max_seq_len} would keep "
            f"{SUGGESTION_KEEPS:.0%} of the samples (and max_tokens_per_gpu must be at least as large)"
        )
    if report.dropped_too_short:
        reasons.append(
            f"{_are(report.dropped_too_short)} under instructlab-training's fixed minimum of "
            f"{report.min_seq_len} tokens: check the dataset mapping, or remove them"
        )
    advice = (
        f" Raise {field} to train on the {report.kept_samples} kept samples anyway."
        if report.kept_samples
        else " No sample is left to train on."
    )
    raise DataGateError(
        f"the data would lose {report.dropped_samples} of {report.input_samples} samples "
        f"({report.dropped_fraction:.1%}), more than {field}={max_dropped_fraction:g} allows: "
        + "; ".join(reasons)
        + "."
        + advice
    )

"""A running training job's progress, as whoever waits for it reads it, says it, and shows it.

This is the waiter's side; the pod's side, which makes the numbers from the metrics lines, is
:class:`~airflow_provider_sft.core.training.progress.ProgressTracker`.

Two sources, one :class:`Progress`:

* ``status.trainerStatus`` of a TrainJob (KEP-2779, Trainer v2.2+ with the ``TrainJobStatus``
  gate on): the pod pushes it, the waiter's watch already receives it. Metric values are strings
  (``format(v, ".6g")``, ints in decimal); a metric not known is left out, and so is one that does
  not read as a number: nothing but numbers from it reaches a log line or the UI.
* the rank-0 pod's ``step ...`` progress lines (:func:`~airflow_provider_sft.core.training.progress.progress_line`),
  where there is no trainerStatus (the gate off, Trainer v2.1, a PyTorchJob, a trainer that does
  not push). Read by named fields, so fields added later (``tokens/s``, ``val_loss``) or unknown
  ones change nothing.

:class:`LiveProgress` decides when a progress line is due (about every 5%, or every few
minutes when the percentage does not move; never more often than every 30 s), keeps the loss
curve seen so far for the Training results tab, and builds the JSON-safe payload it shows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

SOURCE_TRAINER_STATUS = "status.trainerStatus"
SOURCE_POD_LOG = "pod log"  # the rank-0 pod's step lines
SOURCE_OUTPUT = "training output"  # the local backend's process: the same lines
SOURCES = (SOURCE_TRAINER_STATUS, SOURCE_POD_LOG, SOURCE_OUTPUT)
#: The XCom key the train task's progress payload is stored under, for the Training results tab.
PROGRESS_XCOM_KEY = "training_progress"
MIN_INTERVAL_SECONDS = 30.0  # never a progress line more often than this
MAX_INTERVAL_SECONDS = 180.0  # a line at least this often while the job moves, whatever the percentage
PERCENT_STEP = 5  # a line each time the percentage gained this much
MAX_CURVE_POINTS = 400  # the curve in the payload is thinned to at most this many points

_PROVIDER_PREFIX = re.compile(r"^\[sft(?: node \d+/\d+)?\] ")
_NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"
#: ``name value`` fields of a step line, and ``value unit`` ones; what is not listed is ignored.
_NAMED = re.compile(rf"(?:^|\s)(step|epoch|loss|lr|grad_norm|val_loss|ETA)\s+({_NUMBER}(?:/\d+)?)s?(?=\s|$)")
_UNITS = re.compile(rf"(?:^|\s)({_NUMBER})\s+(samples/s|tokens/s)(?=\s|$)")


#: One point of the curve so far: (step, loss, learning rate or None).
CurvePoint = tuple[int, float, "float | None"]


@dataclass(frozen=True)
class Progress:
    """Where a running job stands; what a source did not say is None."""

    source: str
    step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None  # 1-based, as trainerStatus and the step line print it
    num_epochs: int | None = None
    percent: int | None = None  # 0..100, floored
    loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    samples_per_second: float | None = None
    eta_seconds: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int(value: Any) -> int | None:
    try:
        return int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _floor_percent(step: int | None, total: int | None) -> int | None:
    if step is None or not total or total <= 0:
        return None
    return max(0, min(100, math.floor(100 * step / total)))


def from_trainer_status(job: dict[str, Any] | None) -> Progress | None:
    """The progress a TrainJob's ``status.trainerStatus`` reports, or None without one."""
    status = ((job or {}).get("status") or {}).get("trainerStatus")
    if not isinstance(status, dict):
        return None
    metrics: dict[str, Any] = {}
    for item in status.get("metrics") or []:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            metrics[item["name"]] = item.get("value")
    step, total = _int(metrics.get("step")), _int(metrics.get("total_steps"))
    percent = _int(status.get("progressPercentage"))
    eta = _int(status.get("estimatedRemainingSeconds"))
    return Progress(
        SOURCE_TRAINER_STATUS,
        step=step,
        total_steps=total,
        epoch=_int(metrics.get("epoch")),
        num_epochs=_int(metrics.get("num_epochs")),
        percent=percent if percent is not None else _floor_percent(step, total),
        loss=_float(metrics.get("loss")),
        learning_rate=_float(metrics.get("learning_rate")),
        tokens_per_second=_float(metrics.get("tokens_per_second")),
        samples_per_second=_float(metrics.get("samples_per_second")),
        eta_seconds=eta,
    )


def from_progress_line(line: str, source: str = SOURCE_POD_LOG) -> Progress | None:
    """The progress of one pod output line when it is a ``step ...`` progress line, else None.

    ``[sft] step 3/40 epoch 1/2 loss 1.2345 lr 2e-05 grad_norm 0.812 31.2 samples/s ETA 95s``;
    the ``[sft node i/n]`` prefix of a node's lines too. Only a line that starts with ``step`` counts.
    """
    text = _PROVIDER_PREFIX.sub("", line.rpartition("\r")[2].strip(), count=1)
    if not text.startswith("step "):
        return None
    named = dict(_NAMED.findall(text))
    units = {unit: value for value, unit in _UNITS.findall(text)}
    step_text, _, total_text = named.get("step", "").partition("/")
    step = _int(step_text)
    if step is None:
        return None
    epoch_text, _, epochs_text = named.get("epoch", "").partition("/")
    total = _int(total_text)
    eta = _float(named.get("ETA"))
    return Progress(
        source,
        step=step,
        total_steps=total,
        epoch=_int(epoch_text),
        num_epochs=_int(epochs_text),
        percent=_floor_percent(step, total),
        loss=_float(named.get("loss")),
        learning_rate=_float(named.get("lr")),
        tokens_per_second=_float(units.get("tokens/s")),
        samples_per_second=_float(units.get("samples/s")),
        eta_seconds=None if eta is None else round(eta),
    )


def duration_text(seconds: int) -> str:
    """``45s``, ``12m05s``, ``3h07m``: an ETA a person reads at a glance."""
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_text(progress: Progress) -> str:
    """The task log's progress line: ``progress 15%: step 30/200, epoch 1/2, loss 1.2345,
    812 tokens/s, ETA 2m10s (from status.trainerStatus)``; what is not known is left out."""
    percent = "?" if progress.percent is None else f"{progress.percent}%"
    parts = []
    if progress.step is not None:
        parts.append(f"step {progress.step}" + (f"/{progress.total_steps}" if progress.total_steps else ""))
    if progress.epoch is not None:
        parts.append(f"epoch {progress.epoch}" + (f"/{progress.num_epochs}" if progress.num_epochs else ""))
    if progress.loss is not None:
        parts.append(f"loss {progress.loss:.4f}")
    if progress.tokens_per_second is not None:
        parts.append(f"{progress.tokens_per_second:.0f} tokens/s")
    elif progress.samples_per_second is not None:
        parts.append(f"{progress.samples_per_second:.1f} samples/s")
    if progress.eta_seconds is not None:
        parts.append(f"ETA {duration_text(progress.eta_seconds)}")
    return f"progress {percent}: {', '.join(parts) or 'no figures yet'} (from {progress.source})"


@dataclass
class LiveProgress:
    """What a wait saw of a job's progress, and when it is time to say so.

    ``observe`` takes each reading (a watched object's trainerStatus, a step line); ``due`` says,
    at a monotonic time, whether a progress line is due: the first reading, then each time the
    percentage gained ``percent_step``, or ``max_interval_seconds`` passed with the step moved;
    never within ``min_interval_seconds`` of the last line. The readings' losses
    make the curve the Training results tab draws while the job runs.
    """

    min_interval_seconds: float = MIN_INTERVAL_SECONDS
    max_interval_seconds: float = MAX_INTERVAL_SECONDS
    percent_step: int = PERCENT_STEP
    latest: Progress | None = None
    said: Progress | None = None  # the reading of the last line
    said_at: float | None = None
    curve: list[CurvePoint] = field(default_factory=list)  # steps rising

    @property
    def from_trainer_status(self) -> bool:
        """Whether the job reports trainerStatus: then the pod log is not read for progress."""
        return self.latest is not None and self.latest.source == SOURCE_TRAINER_STATUS

    def observe(self, progress: Progress | None) -> None:
        if progress is None or progress == self.latest:
            return
        if self.from_trainer_status and progress.source != SOURCE_TRAINER_STATUS:
            return  # the status is the better source once a job has it
        self.latest = progress
        if progress.step is not None and progress.loss is not None:
            self._add_point((progress.step, progress.loss, progress.learning_rate))

    def _add_point(self, point: CurvePoint) -> None:
        if self.curve and point[0] <= self.curve[-1][0]:
            # a resumed run repeats steps from its saved state: the newer reading wins
            self.curve = [earlier for earlier in self.curve if earlier[0] < point[0]]
        self.curve.append(point)
        if len(self.curve) > MAX_CURVE_POINTS:  # keep the last, thin the rest evenly
            self.curve = [*self.curve[:-1:2], self.curve[-1]]

    def due(self, now: float) -> bool:
        latest = self.latest
        if latest is None or latest == self.said:
            return False
        if self.said is None or self.said_at is None:
            return True
        if now - self.said_at < self.min_interval_seconds:
            return False
        if (
            latest.percent is not None
            and self.said.percent is not None
            and (latest.percent >= self.said.percent + self.percent_step or latest.percent == 100)
        ):
            return True
        return now - self.said_at >= self.max_interval_seconds

    def said_now(self, now: float) -> None:
        """Record that the latest reading was said at ``now``."""
        self.said, self.said_at = self.latest, now

    def payload(self, run_name: str, *, updated: str) -> dict[str, Any]:
        """What the Training results tab shows of a running job: numbers and the source, nothing else."""
        latest = self.latest or Progress(SOURCE_POD_LOG)
        return {
            "run_name": run_name,
            "updated": updated,
            "progress": latest.to_dict(),
            "curve": {
                "step": [step for step, _, _ in self.curve],
                "loss": [loss for _, loss, _ in self.curve],
                "learning_rate": [lr for _, _, lr in self.curve],
            },
        }


def progress_of_payload(payload: Any) -> tuple[Progress, list[CurvePoint], str] | None:
    """(progress, curve, updated) from a stored payload, or None when it is not one (an older or
    foreign XCom): only numbers are taken from it."""
    if not isinstance(payload, dict) or not isinstance(payload.get("progress"), dict):
        return None
    raw = payload["progress"]
    ints = ("step", "total_steps", "epoch", "num_epochs", "percent", "eta_seconds")
    floats = ("loss", "learning_rate", "tokens_per_second", "samples_per_second")
    source = raw.get("source") if raw.get("source") in SOURCES else None
    if source is None:
        return None
    numbers: dict[str, Any] = {name: _int(raw.get(name)) for name in ints}
    numbers.update({name: _float(raw.get(name)) for name in floats})
    progress = Progress(str(source), **numbers)
    curve = payload.get("curve") or {}
    steps, losses = curve.get("step") or [], curve.get("loss") or []
    rates = curve.get("learning_rate") or [None] * len(steps)
    points = [
        (step, loss, None if lr is None else _float(lr))
        for step, loss, lr in zip(map(_int, steps), map(_float, losses), rates, strict=False)
        if step is not None and loss is not None
    ]
    updated = payload.get("updated")
    return progress, points, updated if isinstance(updated, str) else ""


#: Called with the tracker each time a progress line is due (its ``said`` is the reading to say).
ProgressSink = Callable[[LiveProgress], None]


def say_when_due(tracker: LiveProgress, sink: ProgressSink, now: float, *, final: bool = False) -> None:
    """Hand the tracker to ``sink`` when a line is due (``final``: the last reading, if not said yet)."""
    if tracker.due(now) or (final and tracker.latest is not None and tracker.latest != tracker.said):
        tracker.said_now(now)
        sink(tracker)

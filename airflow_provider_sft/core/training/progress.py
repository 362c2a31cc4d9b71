"""The ``step ...`` progress lines of a training run, about 20 a run, on a CPU and on CUDA alike.

The CPU loop prints them as it trains. On CUDA, instructlab-training trains in a torchrun
subprocess whose own output only the full log keeps (the task log shows the provider's lines:
see :mod:`pod.protocol`), so :class:`MetricsFollower` prints the same lines from the metrics file
instructlab writes, one JSON line per optimizer step, while the subprocess runs.

Both go through one :class:`ProgressTracker`: it turns the metrics file's step lines (instructlab's
keys, which the CPU loop writes too) into a :class:`ProgressSnapshot` (samples seen of the whole
run, the smoothed loss, the speed and the ETA over a recent window, the latest validation loss),
which the progress lines print and the pod pushes to the TrainJob's ``status.trainerStatus``
(:mod:`trainer_status`). One way to compute progress, whichever device trains.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from airflow_provider_sft.core.results.efficiency import Efficiency, efficiency_parts
from airflow_provider_sft.core.results.metrics import LOSS_KEYS, LossSmoother, MetricsSummary

Logger = Callable[[str], None]
PROGRESS_LINES = 20  # about this many progress lines per run
UNKNOWN_TOTAL_EVERY = 10  # a progress line every this many steps when the total is not known
#: The speed (and so the ETA) is measured over the last this many steps ...
WINDOW_STEPS = 10
#: ... or over the last this many seconds of them, whichever is shorter (one step at least).
WINDOW_SECONDS = 120.0


def is_progress_step(step: int, total_steps: int | None) -> bool:
    """Whether ``step`` gets a progress line: the first, the last and about 20 in between."""
    if total_steps is None:
        return step == 1 or step % UNKNOWN_TOTAL_EVERY == 0
    return step in (1, total_steps) or step % math.ceil(total_steps / PROGRESS_LINES) == 0


def _number(value: float | None, spec: str) -> str:
    return "?" if value is None else format(value, spec)


def progress_line(
    *,
    step: int,
    total_steps: int | None,
    epoch: int,
    num_epochs: int,
    loss: float | None,
    lr: float | None,
    grad_norm: float | None,
    samples_per_second: float | None,
    eta_seconds: float | None,
    tokens_per_second: float | None = None,
) -> str:
    """``step 3/40 epoch 1/2 loss 1.2345 lr 2e-05 grad_norm 0.812 31.2 samples/s 2210 tokens/s ETA 95s``.

    ``epoch`` counts from 0, as the metrics file does. What is not known is left out
    (the total, the gradient norm, the speeds, the ETA); a missing loss or lr reads ``?``.
    """
    parts = [
        f"step {step}/{total_steps}" if total_steps else f"step {step}",
        f"epoch {epoch + 1}/{num_epochs}",
        f"loss {_number(loss, '.4f')}",
        f"lr {_number(lr, '.3g')}",
    ]
    if grad_norm is not None:
        parts.append(f"grad_norm {grad_norm:.3f}")
    if samples_per_second is not None:
        parts.append(f"{samples_per_second:.1f} samples/s")
    if tokens_per_second is not None:
        parts.append(f"{tokens_per_second:.0f} tokens/s")
    if eta_seconds is not None:
        parts.append(f"ETA {eta_seconds:.0f}s")
    return " ".join(parts)


def summary_line(summary: MetricsSummary, efficiency: Efficiency | None = None) -> str:
    """``summary: 180 steps, 6 epochs, final loss 2.3512 (last step 2.2871, min 1.9702, perplexity 10.5),
    1440 samples, 118250 tokens, 33.1 samples/s``: where the loss ended, beside how long it took.
    With a validation split: ``, validation loss 2.4010 at step 180 (best 2.3904 at step 160)``;
    then, when known, the efficiency figures (``; 2890 tokens/s, n/a tokens/s per GPU, MFU n/a, ...``,
    see :func:`efficiency_parts`).

    The smoothed loss leads: one step's loss on a small batch is noisy. What the metrics
    did not record reads ``?``; a figure without meaning (a CPU run's MFU) reads ``n/a``.
    """
    throughput = summary.avg_throughput_samples_per_second
    return (
        f"summary: {summary.steps} steps, {summary.epochs} epochs, "
        f"final loss {_number(summary.final_loss_smoothed, '.4f')} (last step {_number(summary.final_loss, '.4f')}, "
        f"min {_number(summary.min_loss, '.4f')}, perplexity {_number(summary.perplexity, '.3g')}), "
        f"{summary.samples_seen} samples, {summary.total_tokens} tokens"
        + ("" if throughput is None else f", {throughput:.1f} samples/s")
        + (
            f", validation loss {_number(summary.validation_loss, '.4f')} at step {summary.validation_step} "
            f"(best {_number(summary.best_validation_loss, '.4f')} at step {summary.best_validation_step})"
            if summary.validation
            else ""
        )
        + ("" if efficiency is None else "; " + ", ".join(efficiency_parts(efficiency)))
    )


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _timestamp(value: Any) -> float | None:
    """A metrics line's ``timestamp`` in seconds since the epoch (instructlab writes local time
    without a zone, the CPU loop UTC: only differences within one file are used)."""
    try:
        return datetime.fromisoformat(value).timestamp() if isinstance(value, str) else None
    except ValueError:
        return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class ProgressSnapshot:
    """Where a run stands after its latest metrics line: what a progress line and ``trainerStatus`` say.

    ``epoch`` counts from 0, as the metrics file does. ``total_samples`` is the whole run's
    (every epoch's). The speeds are over a recent window (see :class:`ProgressTracker`); ``at``
    is when the line was written, in seconds since the epoch. ``validation`` marks a snapshot
    that a validation line updated (no new step: no progress line).
    """

    step: int
    total_steps: int | None
    epoch: int
    num_epochs: int
    samples_seen: int | None
    total_samples: int | None
    loss: float | None
    loss_smoothed: float | None
    lr: float | None
    grad_norm: float | None
    samples_per_second: float | None
    tokens_per_second: float | None
    eta_seconds: float | None
    validation_loss: float | None
    at: float
    validation: bool = False

    @property
    def percent(self) -> int | None:
        """The floor of samples seen over the whole run's samples, 0..100 (None when not known)."""
        if self.samples_seen is None or not self.total_samples:
            return None
        return max(0, min(100, self.samples_seen * 100 // self.total_samples))

    @property
    def gets_line(self) -> bool:
        """Whether this step prints a progress line (about 20 a run; none for a validation line)."""
        return not self.validation and is_progress_step(self.step, self.total_steps)

    def line(self) -> str:
        return progress_line(
            step=self.step,
            total_steps=self.total_steps,
            epoch=self.epoch,
            num_epochs=self.num_epochs,
            loss=self.loss,
            lr=self.lr,
            grad_norm=self.grad_norm,
            samples_per_second=self.samples_per_second,
            eta_seconds=self.eta_seconds,
            tokens_per_second=self.tokens_per_second,
        )


@dataclass(frozen=True)
class _Point:
    at: float
    samples_seen: int
    tokens: int | None  # the step's tokens (all ranks'), None when the line has none


class ProgressTracker:
    """Turns metrics lines (instructlab's keys) into :class:`ProgressSnapshot` s, one line at a time.

    The ETA is the samples left in the whole run over the speed of a recent window: the samples
    the last :data:`WINDOW_STEPS` steps (at most :data:`WINDOW_SECONDS` of them) saw, over the time
    between their lines. Not steps left over samples/s (a unit error), and not the whole run's
    average, which lags behind a run whose speed changed (another job took the GPU, the sequences
    got longer) and counts the time before the first step. A resumed attempt (the metrics file's
    resume marker, or a step number that goes back) starts a new window: the time between
    attempts is no training speed. Until a window has two steps, the line's own throughput
    (instructlab's ``overall_throughput``: that step's samples over its time) stands in.
    """

    def __init__(
        self,
        *,
        num_epochs: int,
        effective_batch_size: int,
        window_steps: int = WINDOW_STEPS,
        window_seconds: float = WINDOW_SECONDS,
    ):
        self.num_epochs = num_epochs
        self.effective_batch_size = effective_batch_size
        self.window_steps = window_steps
        self.window_seconds = window_seconds
        self._window: collections.deque[_Point] = collections.deque()
        self._smoother = LossSmoother()
        self._last: ProgressSnapshot | None = None

    @property
    def latest(self) -> ProgressSnapshot | None:
        return self._last

    def update(self, row: dict[str, Any], *, at: float | None = None) -> ProgressSnapshot | None:
        """The snapshot after one metrics line (a step, or a validation line); None for other lines.

        ``at`` is when the line was written (seconds since the epoch); by default its ``timestamp``,
        else now.
        """
        if row.get("hparams"):
            return None
        if row.get("resumed") is True:
            self._window.clear()
            return None
        step = _int(row.get("step"))
        if step is None:
            return None
        loss_key = next((key for key in LOSS_KEYS if key in row), None)
        if loss_key is None:
            if (value := _float(row.get("val_loss"))) is None or self._last is None:
                return None
            self._last = dataclasses.replace(self._last, validation_loss=value, validation=True)
            return self._last
        when = at if at is not None else _timestamp(row.get("timestamp"))
        when = time.time() if when is None else when
        loss = _float(row[loss_key])
        samples_seen = _int(row.get("samples_seen"))
        total_samples = self._total_samples(row)
        samples_per_second, tokens_per_second = self._speeds(row, step, when, samples_seen)
        eta = None
        if total_samples is not None and samples_seen is not None and samples_per_second:
            eta = max(0, total_samples - samples_seen) / samples_per_second
        epoch = _int(row.get("epoch"))
        self._last = ProgressSnapshot(
            step=step,
            total_steps=self._total_steps(row),
            epoch=epoch if epoch is not None else 0,
            num_epochs=self.num_epochs,
            samples_seen=samples_seen,
            total_samples=total_samples,
            loss=loss,
            loss_smoothed=self._smoother.add(loss),
            lr=_float(row.get("lr")),
            grad_norm=_float(row.get("gradnorm")),
            samples_per_second=samples_per_second,
            tokens_per_second=tokens_per_second,
            eta_seconds=eta,
            validation_loss=self._last.validation_loss if self._last is not None else None,  # the latest
            at=when,
        )
        return self._last

    def _speeds(
        self, row: dict[str, Any], step: int, when: float, samples_seen: int | None
    ) -> tuple[float | None, float | None]:
        """Samples/s and tokens/s over the window, which this step joins."""
        if self._last is not None and (step <= self._last.step or when < self._last.at):
            self._window.clear()  # a new attempt re-runs steps after its saved state
        if samples_seen is not None:
            self._window.append(_Point(when, samples_seen, _int(row.get("num_tokens_rank0"))))
        window = self._window
        while len(window) > self.window_steps + 1:
            window.popleft()
        while len(window) > 2 and when - window[0].at > self.window_seconds:
            window.popleft()
        seconds = window[-1].at - window[0].at if len(window) >= 2 else 0.0
        if seconds <= 0:
            return _float(row.get("overall_throughput")), _float(row.get("tokens_per_second"))
        points = list(window)
        samples = (points[-1].samples_seen - points[0].samples_seen) / seconds
        tokens = [point.tokens for point in points[1:]]
        per_second = None if None in tokens else sum(t or 0 for t in tokens) / seconds
        return samples, per_second

    def _total_samples(self, row: dict[str, Any]) -> int | None:
        per_epoch = _int(row.get("total_samples"))
        return per_epoch * self.num_epochs if per_epoch and per_epoch > 0 else None

    def _total_steps(self, row: dict[str, Any]) -> int | None:
        per_epoch = _int(row.get("num_epoch_steps"))
        if per_epoch is None or per_epoch <= 0:
            samples = _int(row.get("total_samples"))
            if samples is None or samples <= 0:
                return None
            per_epoch = math.ceil(samples / self.effective_batch_size)
        return per_epoch * self.num_epochs


class MetricsFollower:
    """Prints a progress line for the steps a metrics JSONL file gains, while another process writes it.

    Use it as a context manager around the training subprocess: a thread reads what the file
    gained every ``interval`` seconds (only whole lines: the writer may be mid-line), and the
    exit reads the rest, so the last step is always printed. Each line goes through a
    :class:`ProgressTracker` (the lines' timestamps time the window), whose snapshots also go to
    ``on_snapshot`` (the ``trainerStatus`` reporter). Lines it cannot read are skipped: the
    follower never stops a training.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        num_epochs: int,
        effective_batch_size: int,
        log: Logger,
        interval: float = 2.0,
        on_snapshot: Callable[[ProgressSnapshot], None] | None = None,
    ):
        self.path = Path(path)
        self.tracker = ProgressTracker(num_epochs=num_epochs, effective_batch_size=effective_batch_size)
        self.log = log
        self.on_snapshot = on_snapshot
        self.interval = interval
        self._offset = 0
        self._partial = b""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> MetricsFollower:
        self._thread = threading.Thread(target=self._follow, daemon=True, name="sft-progress")
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.poll()

    def _follow(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        """Print the progress lines of the whole lines the file gained since the last call."""
        with self._lock:
            try:
                with self.path.open("rb") as handle:
                    handle.seek(self._offset)
                    data = handle.read()
            except OSError:  # not written yet
                return
            self._offset += len(data)
            *lines, self._partial = (self._partial + data).split(b"\n")
            for line in lines:
                self._progress(line)

    def _progress(self, line: bytes) -> None:
        try:
            row = json.loads(line)  # the stdlib reads NaN/Infinity, which instructlab may write
        except ValueError:
            return
        if not isinstance(row, dict) or (snapshot := self.tracker.update(row)) is None:
            return
        if snapshot.gets_line:
            self.log(snapshot.line())
        if self.on_snapshot is not None:
            self.on_snapshot(snapshot)

"""The ``step ...`` progress lines of a training run, about 20 a run, on a CPU and on CUDA alike.

The CPU loop prints them as it trains. On CUDA, instructlab-training trains in a torchrun
subprocess whose own output only the full log keeps (the task log shows the provider's lines:
see :mod:`pod.protocol`), so :class:`MetricsFollower` prints the same lines from the metrics file
instructlab writes, one JSON line per optimizer step, while the subprocess runs.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from airflow_provider_sft.core.results.efficiency import Efficiency, efficiency_parts
from airflow_provider_sft.core.results.metrics import LOSS_KEYS, MetricsSummary

Logger = Callable[[str], None]
PROGRESS_LINES = 20  # about this many progress lines per run
UNKNOWN_TOTAL_EVERY = 10  # a progress line every this many steps when the total is not known


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
) -> str:
    """``step 3/40 epoch 1/2 loss 1.2345 lr 2e-05 grad_norm 0.812 31.2 samples/s ETA 95s``.

    ``epoch`` counts from 0, as the metrics file does. What is not known is left out
    (the total, the gradient norm, the speed, the ETA); a missing loss or lr reads ``?``.
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


def _timestamp(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


class MetricsFollower:
    """Prints a progress line for the steps a metrics JSONL file gains, while another process writes it.

    Use it as a context manager around the training subprocess: a thread reads what the file
    gained every ``interval`` seconds (only whole lines: the writer may be mid-line), and the
    exit reads the rest, so the last step is always printed. The total number of steps is
    ``num_epoch_steps`` (in each of instructlab's step lines) times ``num_epochs``, else
    estimated from ``total_samples`` and ``effective_batch_size``; the ETA comes from the
    lines' timestamps. Lines it cannot read are skipped: the follower never stops a training.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        num_epochs: int,
        effective_batch_size: int,
        log: Logger,
        interval: float = 2.0,
    ):
        self.path = Path(path)
        self.num_epochs = num_epochs
        self.effective_batch_size = effective_batch_size
        self.log = log
        self.interval = interval
        self._offset = 0
        self._partial = b""
        self._first: tuple[int, datetime] | None = None  # the first step seen, and when it was written
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
                if (text := self._progress(line)) is not None:
                    self.log(text)

    def _progress(self, line: bytes) -> str | None:
        try:
            row = json.loads(line)  # the stdlib reads NaN/Infinity, which instructlab may write
        except ValueError:
            return None
        if not isinstance(row, dict) or row.get("hparams") or not isinstance(row.get("step"), int):
            return None
        loss_key = next((key for key in LOSS_KEYS if key in row), None)
        if loss_key is None:
            return None  # a validation line
        step = row["step"]
        when = _timestamp(row.get("timestamp"))
        if self._first is None and when is not None:
            self._first = (step, when)
        total = self._total_steps(row)
        if not is_progress_step(step, total):
            return None
        epoch = row.get("epoch")
        return progress_line(
            step=step,
            total_steps=total,
            epoch=epoch if isinstance(epoch, int) else 0,
            num_epochs=self.num_epochs,
            loss=_float(row[loss_key]),
            lr=_float(row.get("lr")),
            grad_norm=_float(row.get("gradnorm")),
            samples_per_second=_float(row.get("overall_throughput")),
            eta_seconds=self._eta(step, total, when),
        )

    def _total_steps(self, row: dict[str, Any]) -> int | None:
        per_epoch = row.get("num_epoch_steps")
        if not isinstance(per_epoch, int) or per_epoch <= 0:
            samples = row.get("total_samples")
            if not isinstance(samples, int) or samples <= 0:
                return None
            per_epoch = math.ceil(samples / self.effective_batch_size)
        return per_epoch * self.num_epochs

    def _eta(self, step: int, total: int | None, when: datetime | None) -> float | None:
        if total is None or when is None or self._first is None or step <= self._first[0]:
            return None
        first_step, first_when = self._first
        per_step = (when - first_when).total_seconds() / (step - first_step)
        return max(0.0, per_step * (total - step))

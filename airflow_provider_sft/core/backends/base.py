"""The contract every training backend implements, deferral included.

A caller (the operator, the KFP runner) never asks which backend it holds:

* ``submit`` starts the run (after ``preflight``) and returns a JSON-safe handle;
* ``wait`` blocks until the run ends, streaming its log, and cleans up by policy;
* where ``deferrable`` is true, ``poll`` tells without blocking whether the run has
  ended, a trigger waits instead of ``wait``, and ``complete`` turns the trigger's
  :class:`JobResult` into the final one (log tail, clean-up), as ``wait`` would have;
* ``cancel`` stops the run and leaves nothing behind.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from airflow_provider_sft.core.run import TrainingRun

LogSink = Callable[[str], None]


class BackendName(str, Enum):
    LOCAL = "local"
    KUBERNETES = "kubernetes"


class JobStatus(str, Enum):
    RUNNING = "running"  # not ended yet (queued, pending or training)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class JobHandle:
    """JSON-safe coordinates of a submitted run (pushed to XCom, crosses deferral)."""

    backend: BackendName
    name: str
    output_dir: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend.value,
            "name": self.name,
            "output_dir": self.output_dir,
            **self.details,
        }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> JobHandle:
        details = {k: v for k, v in data.items() if k not in ("backend", "name", "output_dir")}
        return cls(BackendName(data["backend"]), data["name"], data["output_dir"], details)


@dataclass(frozen=True)
class JobResult:
    status: JobStatus
    message: str = ""
    exit_code: int | None = None
    reason: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status is JobStatus.SUCCEEDED

    @property
    def ended(self) -> bool:
        return self.status is not JobStatus.RUNNING

    def to_payload(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "message": self.message,
            "exit_code": self.exit_code,
            "reason": self.reason,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> JobResult:
        return cls(
            JobStatus(payload["status"]),
            payload.get("message", ""),
            payload.get("exit_code"),
            payload.get("reason", ""),
        )


class TrainingBackend(abc.ABC):
    """Runs :class:`TrainingRun`\\ s. ``preflight`` must reject what ``submit`` cannot honour."""

    name: BackendName
    #: Whether a trigger can wait for this backend's runs (``poll`` + ``complete``).
    deferrable: bool = False

    @abc.abstractmethod
    def preflight(self, run: TrainingRun) -> None:
        """Raise ``InvalidParameterError``/``DatasetError`` for anything this backend cannot run. No side effects."""

    @abc.abstractmethod
    def submit(self, run: TrainingRun, *, timeout_seconds: float | None = None) -> JobHandle:
        """Start the run and return at once; ``timeout_seconds`` is the whole run's limit, if any."""

    @abc.abstractmethod
    def wait(self, handle: JobHandle, *, on_log: LogSink, timeout_seconds: float | None = None) -> JobResult:
        """Block until the run ends (or the timeout passes, which cancels it), streaming log lines."""

    @abc.abstractmethod
    def cancel(self, handle: JobHandle) -> None:
        """Stop the run and leave nothing running. Safe to call twice or after the end."""

    def poll(self, handle: JobHandle) -> JobResult:
        """The run's result now, ``RUNNING`` while it has not ended (deferrable backends)."""
        raise NotImplementedError(f"the {self.name.value} backend cannot be deferred")

    def complete(self, handle: JobHandle, result: JobResult, *, on_log: LogSink) -> JobResult:
        """Finish a run a trigger waited for: what ``wait`` does after the end (deferrable backends)."""
        raise NotImplementedError(f"the {self.name.value} backend cannot be deferred")

"""The contract every training backend implements."""

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
    RUNNING = "running"
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


@dataclass(frozen=True)
class JobResult:
    status: JobStatus
    message: str = ""
    exit_code: int | None = None

    @property
    def succeeded(self) -> bool:
        return self.status is JobStatus.SUCCEEDED


class TrainingBackend(abc.ABC):
    """Runs :class:`TrainingRun`\\ s. ``preflight`` must reject what ``submit`` cannot honour."""

    name: BackendName

    @abc.abstractmethod
    def preflight(self, run: TrainingRun) -> None:
        """Raise ``InvalidParameterError``/``DatasetError`` for anything this backend cannot run. No side effects."""

    @abc.abstractmethod
    def submit(self, run: TrainingRun) -> JobHandle:
        """Start the run and return at once."""

    @abc.abstractmethod
    def wait(self, handle: JobHandle, *, on_log: LogSink, timeout_seconds: float | None = None) -> JobResult:
        """Block until the run ends (or the timeout passes, which cancels it), streaming log lines."""

    @abc.abstractmethod
    def cancel(self, handle: JobHandle) -> None:
        """Stop the run and leave nothing running. Safe to call twice or after the end."""

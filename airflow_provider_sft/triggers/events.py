"""The contract between ``TrainingJobTrigger`` and ``SFTTrainOperator.execute_complete``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from airflow_provider_sft.core.backends.base import JobResult, JobStatus


class EventStatus(str, Enum):
    SUCCESS = "success"  # the TrainJob completed
    FAILED = "failed"  # the TrainJob failed (reason/message from its condition)
    TIMEOUT = "timeout"  # a deadline (start or run) passed first
    ERROR = "error"  # the trigger itself could not follow the job

    @classmethod
    def of(cls, result: JobResult) -> EventStatus:
        if result.status is JobStatus.SUCCEEDED:
            return cls.SUCCESS
        return cls.TIMEOUT if result.status is JobStatus.TIMED_OUT else cls.FAILED


@dataclass(frozen=True)
class TrainJobEvent:
    """One event per deferral: the job's coordinates (a ``JobHandle``) and how its wait ended."""

    status: EventStatus
    job: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict)  # a JobResult payload; empty for ERROR
    message: str = ""

    def to_payload(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> TrainJobEvent:
        return cls(**{**payload, "status": EventStatus(payload["status"])})

    def job_result(self) -> JobResult:
        return JobResult.from_payload(self.result)


def validate_event(event: dict[str, Any] | None) -> TrainJobEvent:
    """Reject a missing or unknown event loudly (never treat it as success)."""
    if event is None:
        raise ValueError("Trigger returned no event: cannot tell whether the TrainJob succeeded")
    try:
        parsed = TrainJobEvent.from_payload(event)
        if parsed.status is not EventStatus.ERROR:
            parsed.job_result()
        return parsed
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"Trigger returned an unknown event {event!r}") from exc

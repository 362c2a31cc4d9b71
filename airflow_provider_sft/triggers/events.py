"""The contract between ``TrainJobTrigger`` and ``SFTTrainOperator.execute_complete``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any


class EventStatus(str, Enum):
    SUCCESS = "success"  # the TrainJob completed
    FAILED = "failed"  # the TrainJob failed (reason/message from its condition)
    ERROR = "error"  # the trigger itself could not follow the job
    TIMEOUT = "timeout"  # the deadline passed first


@dataclass(frozen=True)
class TrainJobEvent:
    status: EventStatus
    name: str
    namespace: str
    reason: str = ""
    message: str = ""

    def to_payload(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> TrainJobEvent:
        return cls(**{**payload, "status": EventStatus(payload["status"])})


def validate_event(event: dict[str, Any] | None) -> TrainJobEvent:
    """Reject a missing or unknown event loudly (never treat it as success)."""
    if event is None:
        raise ValueError("Trigger returned no event: cannot tell whether the TrainJob succeeded")
    try:
        return TrainJobEvent.from_payload(event)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"Trigger returned an unknown event {event!r}") from exc

"""Exceptions raised by the core. Messages state the rule and the offending value."""

from __future__ import annotations


class SFTError(Exception):
    """Base class of every error raised by airflow-provider-sft."""


class InvalidParameterError(SFTError, ValueError):
    """A training parameter is invalid. ``errors`` maps parameter name -> reason."""

    def __init__(self, errors: dict[str, str], *, kind: str = "training"):
        self.errors = dict(errors)
        lines = [f"{name}: {reason}" for name, reason in self.errors.items()]
        noun = "parameter" if len(lines) == 1 else "parameters"
        super().__init__(f"Invalid {kind} {noun}:\n  " + "\n  ".join(lines))


class DatasetError(SFTError, ValueError):
    """The training dataset cannot be used (missing, malformed, empty...)."""


class TrainingFailedError(SFTError):
    """The training process or job ended without success."""


class TrainingTimeoutError(SFTError, TimeoutError):
    """Training did not finish before its deadline."""


class ExportError(SFTError):
    """No usable checkpoint could be exported."""


class PreemptedError(SFTError):
    """Training stopped on SIGTERM after saving its full state: a new attempt can continue from it."""

    def __init__(self, *, step: int, epoch: int, samples_seen: int):
        self.step, self.epoch, self.samples_seen = step, epoch, samples_seen
        super().__init__(
            f"preempted: saved the full state at step {step} (epoch {epoch}, {samples_seen} samples seen); "
            'resume="auto" continues from it'
        )


class PublishError(SFTError):
    """The exported model could not be published (S3, the Hub): the message names the destination,
    says what was uploaded and that the pointer (``latest.json``, the Hub revision) did not move,
    and never holds a credential."""

"""The contract every training backend implements, deferral included.

A caller (the operator, the KFP runner) never asks which backend it holds:

* ``submit`` starts the run (after ``preflight``) and returns a JSON-safe handle;
* ``wait`` blocks until the run ends, streaming its log and, to ``on_progress``, its progress
  when a line of it is due (:mod:`~airflow_provider_sft.core.results.live_progress`), and cleans up by policy;
* where ``deferrable`` is true, ``poll`` tells without blocking whether the run has
  ended, a trigger waits instead of ``wait``, and ``complete`` turns the trigger's
  :class:`JobResult` into the final one (log tail, clean-up), as ``wait`` would have;
* ``cancel`` stops the run and leaves nothing behind;
* ``run_step`` runs a workspace step (``resolve``, ``export``) where the workspace is, and
  returns its result.

Which backend runs a run is chosen by the type of its config, in one place:
:func:`airflow_provider_sft.core.backends.factory.build_backend`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from airflow_provider_sft.core.constants import HF_TOKEN_ENV, TRAINJOB_KIND
from airflow_provider_sft.core.results.live_progress import ProgressSink
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
class Credentials:
    """Secrets a run needs, by backend: a local process gets them in its environment, a cluster
    job through a Kubernetes Secret (and the pull secret as an image pull secret), never the spec."""

    hf_token: str | None = None
    oci_pull_secret: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # more secret variables (a step's S3 keys)

    def secret_env(self) -> dict[str, str]:
        """The secret environment variables of the run, by name."""
        values = {HF_TOKEN_ENV: self.hf_token, **self.env}
        return {name: value for name, value in values.items() if value}

    def __repr__(self) -> str:  # never print the values
        def shown(value: str | None) -> str:
            return "'***'" if value else "None"

        return (
            f"Credentials(hf_token={shown(self.hf_token)}, oci_pull_secret={shown(self.oci_pull_secret)}, "
            f"env={sorted(self.env)})"
        )


#: The XCom key the train task pushes its ``JobHandle.to_dict()`` under, as soon as the job exists.
TRAINING_JOB_XCOM_KEY = "training_job"


@dataclass(frozen=True)
class JobHandle:
    """JSON-safe coordinates of a submitted run (pushed to XCom, crosses deferral).

    Each backend fills what locates its runs: a cluster job its ``kind`` and ``namespace``
    (and ``uid`` once the API server has given one), a local process its ``pid``; the rest is None.
    ``created`` (ISO 8601, UTC) is when the run was created: a cluster job's ``creationTimestamp``,
    a local process's start; the time to the first step counts from it.
    """

    backend: BackendName
    name: str
    output_dir: str
    kind: str | None = None  # TrainJob or PyTorchJob
    namespace: str | None = None
    uid: str | None = None
    pid: int | None = None
    created: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The flat dict of XCom and trigger kwargs, without the fields that do not apply."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["backend"] = self.backend.value
        return {key: value for key, value in data.items() if value is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobHandle:
        """Read a handle, also one an earlier version wrote (an XCom, a serialized trigger).

        Those have the same flat shape; a cluster job's handle from before job kinds has a
        namespace and no ``kind``: it is a TrainJob.
        """
        kind = data.get("kind") or (TRAINJOB_KIND if data.get("namespace") else None)
        return cls(
            BackendName(data["backend"]),
            data["name"],
            data["output_dir"],
            kind=kind,
            namespace=data.get("namespace"),
            uid=data.get("uid"),
            pid=data.get("pid"),
            created=data.get("created"),
        )


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
    def wait(
        self,
        handle: JobHandle,
        *,
        on_log: LogSink,
        timeout_seconds: float | None = None,
        on_progress: ProgressSink | None = None,
    ) -> JobResult:
        """Block until the run ends (or the timeout passes, which cancels it), streaming log lines
        and the run's progress (``on_progress``: about every 5%, never more often than every 30 s)."""

    @abc.abstractmethod
    def cancel(self, handle: JobHandle) -> None:
        """Stop the run and leave nothing running. Safe to call twice or after the end."""

    @abc.abstractmethod
    def run_step(
        self,
        step: str,
        job_name: str,
        config: dict[str, Any],
        *,
        on_log: LogSink,
        timeout_seconds: float | None = None,
        resources: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Run the workspace step ``step`` (``resolve``, ``prepare``, ``export``) on ``config``, as
        ``job_name`` where the backend runs it in a job; its small JSON result. Log lines go to
        ``on_log``. ``resources`` (``cpu``, ``memory``) size the step's job where it has one (the
        default: one CPU, 4Gi); a step run in this process has the process's own."""

    def handle(self, run_name: str, output_dir: str) -> JobHandle:
        """The handle a run of this name will have, known before ``submit``: a kill during the
        submit cancels it."""
        return JobHandle(self.name, run_name, output_dir)

    def poll(self, handle: JobHandle) -> JobResult:
        """The run's result now, ``RUNNING`` while it has not ended (deferrable backends)."""
        raise NotImplementedError(f"the {self.name.value} backend cannot be deferred")

    def complete(self, handle: JobHandle, result: JobResult, *, on_log: LogSink) -> JobResult:
        """Finish a run a trigger waited for: what ``wait`` does after the end (deferrable backends)."""
        raise NotImplementedError(f"the {self.name.value} backend cannot be deferred")

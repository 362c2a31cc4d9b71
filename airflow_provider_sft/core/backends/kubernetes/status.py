"""What a job's status means, and why its pods are not running yet: pure functions.

**TrainJob.**
The Trainer copies its JobSet's ``replicatedJobsStatus`` into ``status.jobsStatus``.
There, ``active`` counts child Jobs with a pod that is running *or Pending*
(unschedulable, pulling its image), so it says nothing about training having
started; ``ready`` counts Jobs whose pods are all ready. A job is therefore
running only once some ``ready`` is positive; before that it is pending, and the
pods' waiting reasons and the scheduler's and kubelet's events say why.

**PyTorchJob** (Training Operator v1): the operator keeps one condition per type (``Created``,
``Running``, ``Restarting``, ``Succeeded``, ``Suspended``, ``Failed``); ``Running`` is set once
its pods run, so before that the job is pending. ``Restarting`` (a pod failed and is replaced;
never with ``backoffLimit: 0``) counts as pending: nothing trains while it lasts.

**Suspended before or after it started.** A queue (Kueue) holds a job it has not admitted with
``suspend: true``; it preempts a running one the same way: the Trainer suspends the JobSet (the
Training Operator its pods), the pods get SIGTERM and their grace period and are deleted, and on
readmission new pods start with the same command. The first is *queued* (counted against the
start timeout); the second is *preempted*, waiting for readmission, and not a failure. The object
says which only sometimes: a PyTorchJob keeps its ``Running`` condition (``False``, reason
``PyTorchJobSuspended``), a TrainJob whose trainer pushed progress has ``status.trainerStatus``.
Otherwise the wait tells them apart by what it saw (see ``watch.WatchCursor``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from airflow_provider_sft.core import constants as c


class JobPhase(str, Enum):
    PENDING = "pending"  # created, pods not running yet (scheduling, pulling images)
    SUSPENDED = "suspended"  # queued (e.g. by Kueue): waiting for admission, not stuck
    PREEMPTED = "preempted"  # suspended after it started: its pods were stopped, waiting for readmission
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (JobPhase.SUCCEEDED, JobPhase.FAILED)

    @property
    def started(self) -> bool:
        return self not in (JobPhase.PENDING, JobPhase.SUSPENDED)


@dataclass(frozen=True)
class JobState:
    phase: JobPhase
    reason: str = ""
    message: str = ""
    #: The first state after a preemption that is not one (set by the wait, which saw both).
    readmitted: bool = field(default=False, compare=False)

    @property
    def terminal(self) -> bool:
        return self.phase.terminal

    def describe(self) -> str:
        return ": ".join(part for part in (self.phase.value, self.reason, self.message) if part)

    def line(self, job: str) -> str:
        """The task log's line for this state of ``job`` (e.g. ``TrainJob sft-x``); a preemption
        and a readmission say so first, as the pods' own ``[sft] preempted`` lines do."""
        if self.phase is JobPhase.PREEMPTED:
            why = ": ".join(part for part in (self.reason, self.message) if part)
            return (
                f"preempted, waiting for readmission: {job} was suspended after it started"
                f"{f' ({why})' if why else ''}; its pods are stopped. Not a failure, and no start "
                "timeout applies while it waits"
            )
        if self.readmitted:
            return (
                "readmitted: the pods start again; they resume from the state saved at preemption "
                f"({job}: {self.describe()})"
            )
        return f"{job}: {self.describe()}"


GONE = JobState(JobPhase.FAILED, "NotFound", "the job was deleted before it finished")


def classify_job_status(job: dict[str, Any]) -> JobState:
    """The phase of a TrainJob or PyTorchJob (by its ``kind``) from its status."""
    if job.get("kind") == c.PYTORCHJOB_KIND:
        return _classify_pytorchjob(job)
    return _classify_trainjob(job)


def _true_conditions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    conditions = (job.get("status") or {}).get("conditions") or []
    return {cond.get("type"): cond for cond in conditions if cond.get("status") == "True"}


def _has_condition(job: dict[str, Any], kind: str) -> bool:
    """Whether the job has a condition of ``kind``, whatever its status."""
    return any(cond.get("type") == kind for cond in (job.get("status") or {}).get("conditions") or [])


def _classify_pytorchjob(job: dict[str, Any]) -> JobState:
    true = _true_conditions(job)
    # The operator sets Running False on suspension; a job that never ran has no Running condition.
    suspended = JobPhase.PREEMPTED if _has_condition(job, c.CONDITION_RUNNING) else JobPhase.SUSPENDED
    for kind, phase in (
        (c.CONDITION_FAILED, JobPhase.FAILED),
        (c.CONDITION_SUCCEEDED, JobPhase.SUCCEEDED),
        (c.CONDITION_SUSPENDED, suspended),
    ):
        if cond := true.get(kind):
            return JobState(phase, cond.get("reason", kind), cond.get("message", ""))
    if ((job.get("spec") or {}).get("runPolicy") or {}).get("suspend"):
        return JobState(suspended, "Suspended")
    if cond := true.get(c.CONDITION_RESTARTING):
        return JobState(JobPhase.PENDING, cond.get("reason", "Restarting"), cond.get("message", ""))
    if true.get(c.CONDITION_RUNNING):
        return JobState(JobPhase.RUNNING)
    return JobState(JobPhase.PENDING)


def _classify_trainjob(trainjob: dict[str, Any]) -> JobState:
    """The phase of a TrainJob from its status conditions and job counts."""
    status = trainjob.get("status") or {}
    true = _true_conditions(trainjob)
    if cond := true.get(c.CONDITION_FAILED):
        return JobState(JobPhase.FAILED, cond.get("reason", ""), cond.get("message", ""))
    if cond := true.get(c.CONDITION_COMPLETE):
        return JobState(JobPhase.SUCCEEDED, cond.get("reason", ""), cond.get("message", ""))
    if (cond := true.get(c.CONDITION_SUSPENDED)) or (trainjob.get("spec") or {}).get("suspend"):
        cond = cond or {}
        # trainerStatus is pushed by a running trainer (KEP-2779): the job ran before its suspension.
        phase = JobPhase.PREEMPTED if status.get("trainerStatus") else JobPhase.SUSPENDED
        return JobState(phase, cond.get("reason", "Suspended"), cond.get("message", ""))
    jobs = status.get("jobsStatus") or []
    if any((job.get("ready") or 0) > 0 for job in jobs):
        return JobState(JobPhase.RUNNING)
    if any((job.get("active") or 0) > 0 for job in jobs):
        return JobState(JobPhase.PENDING, "PodsNotReady", "pods created, not running yet")
    return JobState(JobPhase.PENDING)


def _event_time(event: dict[str, Any]) -> str:
    return (
        event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("series") or {}).get("lastObservedTime")
        or event.get("firstTimestamp")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def pending_reasons(pods: list[dict[str, Any]], events: list[dict[str, Any]], limit: int = 3) -> list[str]:
    """Why the pods do not run yet, newest first: container waiting reasons, then Warning events.

    For example ``pod sft-x-node-0-0-abcde: FailedScheduling: 0/3 nodes are available:
    3 Insufficient nvidia.com/gpu.`` or ``container node: ImagePullBackOff: Back-off pulling image``.
    """
    reasons: list[str] = []
    for pod in pods:
        name = pod["metadata"]["name"]
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") and waiting["reason"] not in ("ContainerCreating", "PodInitializing"):
                detail = f": {waiting['message']}" if waiting.get("message") else ""
                reasons.append(f"pod {name} container {container.get('name')}: {waiting['reason']}{detail}")
    newest = sorted(events, key=_event_time, reverse=True)
    seen: set[tuple[str, str]] = set()
    for event in newest:
        if event.get("type") != "Warning":
            continue
        involved = (event.get("involvedObject") or {}).get("name", "")
        key = (involved, event.get("reason", ""))
        if key in seen:
            continue
        seen.add(key)
        kind = (event.get("involvedObject") or {}).get("kind", "").lower() or "object"
        reasons.append(f"{kind} {involved}: {event.get('reason', '')}: {event.get('message', '').strip()}")
    return reasons[:limit]

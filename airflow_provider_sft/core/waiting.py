"""Waiting for a TrainJob to end with one watch (not a poll loop), sync and async.

Both drivers run the same algorithm through :class:`WatchCursor`: read the job,
then watch it from its resourceVersion; a 410 Gone (the version was compacted)
re-reads and watches again; a DELETED event or a vanished job is a failure; the
deadline bounds the whole wait. Time comes from the injected clock, so the wait
is testable without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow_provider_sft.core.clock import Clock
from airflow_provider_sft.core.kube import TRANSIENT_STATUS, KubeApiError
from airflow_provider_sft.core.trainjob import JobPhase, JobState, classify

GONE = JobState(JobPhase.FAILED, "NotFound", "the TrainJob was deleted before it finished")
WATCH_WINDOW_SECONDS = 300  # a watch is re-opened (from its resourceVersion) at most this often
RECONNECT_DELAY_SECONDS = 1.0


class WatchCursor:
    """Where a wait stands: the last state seen and the resourceVersion to watch from."""

    def __init__(self, namespace: str, name: str, on_event: Callable[[JobState], None]):
        self.namespace, self.name, self.on_event = namespace, name, on_event
        self.last: JobState | None = None
        self.resource_version: str | None = None  # None: (re-)list before watching

    def observe(self, job: dict[str, Any] | None) -> JobState | None:
        """Take a listed/watched object; returns the terminal state when the wait is over."""
        if job is None:
            return GONE
        self.resource_version = job.get("metadata", {}).get("resourceVersion", self.resource_version)
        state = classify(job)
        if state != self.last:
            self.on_event(state)
            self.last = state
        return state if state.terminal else None

    def event(self, kind: str, obj: Any) -> JobState | None:
        """Take one watch event; returns the terminal state when the wait is over."""
        if kind == "ERROR":
            code = int(obj.get("code", 0)) if isinstance(obj, dict) else 0
            if code == 410:
                self.resource_version = None
                return None
            raise KubeApiError(
                f"Watch TrainJob {self.namespace}/{self.name}",
                code,
                obj.get("reason", ""),
                obj.get("message", ""),
            )
        if kind == "BOOKMARK":
            self.resource_version = obj["metadata"]["resourceVersion"]
            return None
        if kind == "DELETED":
            return GONE
        return self.observe(obj)

    def failed_watch(self, exc: BaseException) -> None:
        """Decide about an exception from a watch: relist on 410, retry transient ones, raise the rest."""
        status = getattr(exc, "status", None)
        if status == 410:
            self.resource_version = None
            return
        if isinstance(exc, KubeApiError) or (status is not None and int(status) not in TRANSIENT_STATUS):
            raise exc


def _window(clock: Clock, deadline: float | None) -> int | None:
    """Seconds for the next watch, or None when the deadline has passed."""
    if deadline is None:
        return WATCH_WINDOW_SECONDS
    remaining = deadline - clock.monotonic()
    return None if remaining <= 0 else max(1, min(WATCH_WINDOW_SECONDS, int(remaining) + 1))


def wait_for_trainjob(
    client: Any,
    namespace: str,
    name: str,
    *,
    clock: Clock,
    timeout_seconds: float | None = None,
    on_event: Callable[[JobState], None] = lambda _state: None,
) -> JobState | None:
    """The terminal state of the TrainJob, or None when ``timeout_seconds`` passed first."""
    deadline = None if timeout_seconds is None else clock.monotonic() + timeout_seconds
    cursor = WatchCursor(namespace, name, on_event)
    while True:
        if cursor.resource_version is None and (done := cursor.observe(client.get_trainjob(namespace, name))):
            return done
        window = _window(clock, deadline)
        if window is None:
            return None
        try:
            for event in client.watch_trainjob(namespace, name, cursor.resource_version, window):
                if done := cursor.event(event["type"], event["object"]):
                    return done
                if cursor.resource_version is None:
                    break
        except Exception as exc:
            cursor.failed_watch(exc)
            if cursor.resource_version is not None:
                clock.sleep(RECONNECT_DELAY_SECONDS)


async def await_trainjob(
    client: Any,
    namespace: str,
    name: str,
    *,
    clock: Clock,
    timeout_seconds: float | None = None,
    on_event: Callable[[JobState], None] = lambda _state: None,
) -> JobState | None:
    """Async twin of :func:`wait_for_trainjob` (the trigger's wait), same algorithm."""
    deadline = None if timeout_seconds is None else clock.monotonic() + timeout_seconds
    cursor = WatchCursor(namespace, name, on_event)
    while True:
        if cursor.resource_version is None and (
            done := cursor.observe(await client.get_trainjob(namespace, name))
        ):
            return done
        window = _window(clock, deadline)
        if window is None:
            return None
        try:
            async for event in client.watch_trainjob(namespace, name, cursor.resource_version, window):
                if done := cursor.event(event["type"], event["object"]):
                    return done
                if cursor.resource_version is None:
                    break
        except Exception as exc:
            cursor.failed_watch(exc)
            if cursor.resource_version is not None:
                await clock.asleep(RECONNECT_DELAY_SECONDS)

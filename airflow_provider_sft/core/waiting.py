"""Waiting for a TrainJob to end, with one watch (not a poll loop); sync driver.

The async trigger implements the same algorithm over ``kubernetes_asyncio`` and
the same :func:`classify`: read the job, then watch it from its
resourceVersion; a 410 Gone (the version expired) re-reads and watches again;
the deadline bounds the whole wait. Time comes from the injected clock.
"""

from __future__ import annotations

from collections.abc import Callable

from airflow_provider_sft.core.clock import Clock
from airflow_provider_sft.core.kube import KubeApiError, TrainJobClient
from airflow_provider_sft.core.trainjob import JobPhase, JobState, classify

GONE = JobState(JobPhase.FAILED, "NotFound", "the TrainJob was deleted before it finished")
WATCH_WINDOW_SECONDS = 300  # a watch is re-opened (from its resourceVersion) at most this often


def wait_for_trainjob(
    client: TrainJobClient,
    namespace: str,
    name: str,
    *,
    clock: Clock,
    timeout_seconds: float | None = None,
    on_event: Callable[[JobState], None] = lambda _state: None,
) -> JobState | None:
    """The terminal state of the TrainJob, or None when ``timeout_seconds`` passed first."""
    deadline = None if timeout_seconds is None else clock.monotonic() + timeout_seconds
    last: JobState | None = None
    resource_version: str | None = None
    while True:
        if resource_version is None:  # (re-)list: first time, or after 410 Gone
            job = client.get_trainjob(namespace, name)
            if job is None:
                return GONE
            state = classify(job)
            if state != last:
                on_event(state)
                last = state
            if state.terminal:
                return state
            resource_version = job["metadata"].get("resourceVersion")
        window = WATCH_WINDOW_SECONDS
        if deadline is not None:
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                return None
            window = max(1, min(window, int(remaining) + 1))
        try:
            for event in client.watch_trainjob(namespace, name, resource_version, window):
                kind, obj = event["type"], event["object"]
                metadata = obj.get("metadata", {}) if isinstance(obj, dict) else {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        resource_version = None
                        break
                    raise KubeApiError(
                        f"Watch TrainJob {namespace}/{name}",
                        int(obj.get("code", 0)),
                        obj.get("reason", ""),
                        obj.get("message", ""),
                    )
                resource_version = metadata.get("resourceVersion", resource_version)
                if kind == "BOOKMARK":
                    continue
                if kind == "DELETED":
                    return GONE
                state = classify(obj)
                if state != last:
                    on_event(state)
                    last = state
                if state.terminal:
                    return state
        except Exception as exc:  # the sync Watch raises ApiException(410) for an expired version
            if getattr(exc, "status", None) == 410:
                resource_version = None
                continue
            if isinstance(exc, KubeApiError) or getattr(exc, "status", None) not in (
                None,
                429,
                500,
                502,
                503,
                504,
            ):
                raise
            clock.sleep(1.0)  # connection dropped or transient: re-watch from where we were

"""The rank-0 training pod's log in the task log: followed live, or its tail copied at the end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends.kubernetes.client import KubeClient
from airflow_provider_sft.core.backends.kubernetes.retry import KubeApiError
from airflow_provider_sft.core.clock import Clock

LOG_START_TIMEOUT_SECONDS = 300  # how long to keep asking for a log whose container has not started
LOG_RETRY_SECONDS = 2.0
TAIL_LINES = 200


async def node0_pod(client: KubeClient, namespace: str, job_name: str) -> str | None:
    """Name of the rank-0 trainer pod of a TrainJob (its JobSet's ``node`` job, index 0)."""
    prefix = f"{job_name}-{c.NODE}-0-0-"  # replicated job 0, completion index (node rank) 0
    names = [pod["metadata"]["name"] for pod in await client.list_job_pods(namespace, job_name)]
    return next((name for name in names if name.startswith(prefix)), None)


async def follow_log(
    client: KubeClient,
    namespace: str,
    job_name: str,
    on_log: Callable[[str], None],
    *,
    clock: Clock,
    start_timeout: float = LOG_START_TIMEOUT_SECONDS,
) -> None:
    """Stream the rank-0 pod's log into ``on_log`` until the container ends.

    The pod may not exist yet, and its log answers 400 while the container waits to
    start: both are asked again every few seconds, for at most ``start_timeout``.
    Best effort: the status watch decides the outcome, never the log.
    """
    deadline = clock.monotonic() + start_timeout
    while True:
        try:
            pod = await node0_pod(client, namespace, job_name)
            if pod is not None:
                async for line in client.stream_log(namespace, pod):
                    on_log(line)
                return
        except asyncio.CancelledError:
            raise
        except KubeApiError as exc:
            if exc.status not in (400, 404) or clock.monotonic() >= deadline:
                on_log(f"Log streaming stopped: {exc}")
                return
        except Exception as exc:  # a dropped connection: the tail is copied at the end instead
            on_log(f"Log streaming stopped: {type(exc).__name__}")
            return
        if clock.monotonic() >= deadline:
            return
        await clock.asleep(LOG_RETRY_SECONDS)


async def copy_log_tail(
    client: KubeClient,
    namespace: str,
    job_name: str,
    on_log: Callable[[str], None],
    tail_lines: int = TAIL_LINES,
) -> None:
    try:
        pod = await node0_pod(client, namespace, job_name)
        if pod is None:
            return
        for line in (await client.read_log_tail(namespace, pod, tail_lines)).splitlines():
            on_log(line)
    except KubeApiError as exc:
        on_log(f"Could not read the training pod log: {exc}")

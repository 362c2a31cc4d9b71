"""The rank-0 training pod's log in the task log: followed live, resumed when the stream is cut,
and backfilled at the end with what the task log has not got yet.

The pod log is the run's full output; the task log shows its provider lines (see
:mod:`~airflow_provider_sft.core.pod.protocol`), through a :class:`PodLog`. Every read asks for
timestamps: a read after a cut (an API-server restart, a proxy's idle timeout) starts at the
last timestamp the task log has (``sinceTime``), and the lines it has at that timestamp are
skipped, so no line is shown twice and none is lost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from airflow_provider_sft.core.backends.base import LogSink
from airflow_provider_sft.core.backends.kubernetes.client import KubeClient
from airflow_provider_sft.core.backends.kubernetes.kinds import JobResource
from airflow_provider_sft.core.backends.kubernetes.retry import KubeApiError, is_transient
from airflow_provider_sft.core.clock import Clock
from airflow_provider_sft.core.pod.protocol import classify_log_line, is_result_line, provider_line

log = logging.getLogger(__name__)
LOG_START_TIMEOUT_SECONDS = 300  # how long to keep asking for a log whose container has not started
LOG_RETRY_SECONDS = 2.0
TAIL_LINES = 200
FAILURE_CONTEXT_LINES = 20  # of the pod log's last lines, those not shown are shown after a failure


def split_timestamp(line: str) -> tuple[int | None, str]:
    """(nanoseconds since the epoch, text) of a line read with ``timestamps=true``.

    The kubelet writes RFC 3339 with nanoseconds (``2026-12-05T09:07:27.123456789Z``) and one
    space before the text; a line without one (None) is always taken as new.
    """
    stamp, space, text = line.partition(" ")
    seconds, _, fraction = stamp.removesuffix("Z").partition(".")
    if not space or not stamp.endswith("Z") or not (fraction.isdigit() or not fraction):
        return None, line
    try:
        moment = dt.datetime.fromisoformat(seconds).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None, line
    return int(moment.timestamp()) * 10**9 + int((fraction or "0")[:9].ljust(9, "0")), text


def rfc3339_second(stamp_ns: int) -> str:
    """``sinceTime`` for a read from ``stamp_ns`` on: its second (the API server keeps no finer)."""
    moment = dt.datetime.fromtimestamp(stamp_ns // 10**9, dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class LogCursor:
    """Where the next timestamped read of a pod log starts, and what of it was read before.

    The API server keeps ``sinceTime`` to the second, so a read from there repeats the lines
    already read from that second on: the lines older than the newest one read, and as many
    lines at its timestamp as were read, are skipped. One cursor per reader of a log (the task
    log's stream, the progress poll), so that no reader sees a line twice.
    """

    def __init__(self) -> None:
        self.stamp: int | None = None  # the newest timestamp read (ns), and how many lines carried it
        self.at_stamp = 0

    @property
    def since_time(self) -> str | None:
        """Where the next read starts (None: at the beginning)."""
        return None if self.stamp is None else rfc3339_second(self.stamp)

    def reader(self, take: Callable[[str], None]) -> Callable[[str], None]:
        """A sink for one read starting at :attr:`since_time`: it hands ``take`` each new line's text."""
        start, repeated = self.stamp, self.at_stamp

        def read(line: str) -> None:
            nonlocal repeated
            stamp, text = split_timestamp(line)
            if stamp is not None and start is not None:
                if stamp < start:
                    return
                if stamp == start and repeated > 0:
                    repeated -= 1
                    return
            if stamp is not None:
                self.at_stamp = self.at_stamp + 1 if stamp == self.stamp else 1
                self.stamp = stamp
            take(text)

        return read


class PodLog:
    """The task log's view of a job's rank-0 pod log, and what the backend needs of the rest.

    The task log gets the pod's provider lines (:func:`classify_log_line`), one line naming the pod
    whose log holds the full output, and after a failure the last lines it did not show: the
    pod goes with its job, and a failure's context (a library's traceback) with it. The
    last ``ERROR:`` line and the last result line (``SFT_RESULT``, never shown) are kept for
    the backend. Called as a sink, it takes the backend's own lines, shown as they are.
    """

    def __init__(self, sink: LogSink, namespace: str):
        self.sink = sink
        self.namespace = namespace
        self.pod: str | None = None
        self.last_error: str | None = None
        self.result_line: str | None = None
        self.lines = 0  # of the pod log, read so far
        self.cursor = LogCursor()
        self._recent: deque[tuple[str, bool]] = deque(maxlen=FAILURE_CONTEXT_LINES)

    @classmethod
    def of(cls, sink: LogSink, namespace: str) -> PodLog:
        return sink if isinstance(sink, cls) else cls(sink, namespace)

    def __call__(self, line: str) -> None:
        self.sink(line)

    def found(self, pod: str) -> None:
        """Name the pod whose log is the full output, once per pod (a readmitted job's are new)."""
        if self.pod != pod:
            self.pod = pod
            command = f"kubectl logs -n {self.namespace} {pod}"
            self.sink(provider_line(f"full output: {command} (while the job exists)"))

    @property
    def since_time(self) -> str | None:
        """Where the next read starts (None: at the beginning)."""
        return self.cursor.since_time

    def read(self) -> Callable[[str], None]:
        """A sink for one read of the pod log with timestamps, starting at :attr:`since_time`:
        what the task log has already is skipped (:class:`LogCursor`)."""
        return self.cursor.reader(self.pod_line)

    def pod_line(self, line: str) -> None:
        self.lines += 1
        if is_result_line(line):
            self.result_line = line
            return
        shown = classify_log_line(line)
        self._recent.append((line, shown is not None))
        if shown is None:
            return
        if shown.error is not None:
            self.last_error = shown.error
        self.sink(shown.text)

    def show_failure_context(self) -> None:
        """The pod log's last lines the task log did not show, after a failure."""
        hidden = [line for line, shown in self._recent if not shown]
        if not hidden:
            return
        self.sink(provider_line(f"the pod log's last {len(hidden)} line(s) not shown above:"))
        for line in hidden:
            self.sink(line)


async def rank0_pod(
    client: KubeClient, resource: JobResource, namespace: str, job_name: str
) -> dict[str, Any] | None:
    """The rank-0 pod of a job (a TrainJob's ``node`` index 0, a PyTorchJob's master), or None."""
    pods = await client.list_job_pods(resource, namespace, job_name)
    return next((pod for pod in pods if resource.is_rank0_pod(job_name, pod["metadata"]["name"])), None)


def container_ended(pod: dict[str, Any], container: str) -> bool:
    """Whether the pod's program container has terminated (its log is then complete)."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return True
    return any(
        "terminated" in (entry.get("state") or {})
        for entry in status.get("containerStatuses") or []
        if entry.get("name") == container
    )


async def follow_log(
    client: KubeClient,
    resource: JobResource,
    namespace: str,
    job_name: str,
    pod_log: PodLog,
    *,
    clock: Clock,
    start_timeout_seconds: float = LOG_START_TIMEOUT_SECONDS,
) -> None:
    """Stream the rank-0 pod's log into ``pod_log`` until its container ends.

    The pod may not exist yet, and its log answers 400 while the container waits to
    start: both are asked again every few seconds, for at most ``start_timeout_seconds``. A
    stream that ends while the container runs was cut (an API-server restart, a proxy's
    idle timeout), and so was one that breaks: either is resumed where it stopped.
    Best effort: the status watch decides the outcome, and the backend stops this
    follower when the job ends (a backfill then reads what is left).
    """
    deadline = clock.monotonic() + start_timeout_seconds
    while True:
        try:
            pod = await rank0_pod(client, resource, namespace, job_name)
            if pod is not None:
                name = pod["metadata"]["name"]
                pod_log.found(name)
                take = pod_log.read()
                async for line in client.stream_log(
                    namespace, name, resource.container, since_time=pod_log.since_time
                ):
                    take(line)
                pod = await rank0_pod(client, resource, namespace, job_name)
                if pod is None or container_ended(pod, resource.container):
                    return
                log.info("The log stream of pod %s/%s ended before its container: resuming", namespace, name)
        except asyncio.CancelledError:
            raise
        except KubeApiError as exc:
            waiting = exc.status in (400, 404) and clock.monotonic() < deadline
            if not (waiting or is_transient(exc)):
                pod_log(f"Log streaming stopped: {exc}")
                return
        except Exception as exc:  # a connection dropped mid-stream: resumed where it stopped
            log.info(
                "The log stream of job %s/%s broke (%s): resuming", namespace, job_name, type(exc).__name__
            )
        await clock.asleep(LOG_RETRY_SECONDS)


async def backfill_log(
    client: KubeClient,
    resource: JobResource,
    namespace: str,
    job_name: str,
    pod_log: PodLog,
    tail_lines: int = TAIL_LINES,
) -> None:
    """The pod log's lines the task log has not got yet, of its last ``tail_lines``.

    What a cut stream or a follower stopped at the job's end missed (the ``ERROR:`` and
    result lines are a process's last), or the tail when nothing was streamed.
    """
    try:
        pod = await rank0_pod(client, resource, namespace, job_name)
        if pod is None:
            return
        name = pod["metadata"]["name"]
        pod_log.found(name)
        take = pod_log.read()
        lines = await client.read_log(
            namespace, name, resource.container, tail_lines=tail_lines, since_time=pod_log.since_time
        )
        for line in lines:
            take(line)
    except KubeApiError as exc:
        pod_log(f"Could not read the training pod log: {exc}")

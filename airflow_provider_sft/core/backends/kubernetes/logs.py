"""The rank-0 training pod's log in the task log: followed live, or its tail copied at the end.

The pod log is the run's full output; the task log shows its provider lines (see
:mod:`~airflow_provider_sft.core.task_log`), through a :class:`PodLog`.
"""

from __future__ import annotations

import asyncio
from collections import deque

from airflow_provider_sft.core.backends.base import LogSink
from airflow_provider_sft.core.backends.kubernetes.client import KubeClient
from airflow_provider_sft.core.backends.kubernetes.kinds import JobResource
from airflow_provider_sft.core.backends.kubernetes.retry import KubeApiError
from airflow_provider_sft.core.clock import Clock
from airflow_provider_sft.core.steps import ERROR_PREFIX, RESULT_PREFIX
from airflow_provider_sft.core.task_log import classify, provider_line

LOG_START_TIMEOUT_SECONDS = 300  # how long to keep asking for a log whose container has not started
LOG_RETRY_SECONDS = 2.0
TAIL_LINES = 200
FAILURE_CONTEXT_LINES = 20  # of the pod log's last lines, those not shown are shown after a failure


class PodLog:
    """The task log's view of a job's rank-0 pod log, and what the backend needs of the rest.

    The task log gets the pod's provider lines (:func:`classify`), one line naming the pod
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
        self._recent: deque[tuple[str, bool]] = deque(maxlen=FAILURE_CONTEXT_LINES)

    @classmethod
    def of(cls, sink: LogSink, namespace: str) -> PodLog:
        return sink if isinstance(sink, cls) else cls(sink, namespace)

    def __call__(self, line: str) -> None:
        self.sink(line)

    def found(self, pod: str) -> None:
        """Name the pod whose log is the full output, once."""
        if self.pod is None:
            self.pod = pod
            command = f"kubectl logs -n {self.namespace} {pod}"
            self.sink(provider_line(f"full output: {command} (while the job exists)"))

    def pod_line(self, line: str) -> None:
        self.lines += 1
        if line.startswith(RESULT_PREFIX):
            self.result_line = line
            return
        shown = classify(line)
        self._recent.append((line, shown is not None))
        if shown is None:
            return
        if shown.text.startswith(ERROR_PREFIX):
            self.last_error = shown.text.removeprefix(ERROR_PREFIX)
        self.sink(shown.text)

    def show_failure_context(self) -> None:
        """The pod log's last lines the task log did not show, after a failure."""
        hidden = [line for line, shown in self._recent if not shown]
        if not hidden:
            return
        self.sink(provider_line(f"the pod log's last {len(hidden)} line(s) not shown above:"))
        for line in hidden:
            self.sink(line)


async def node0_pod(client: KubeClient, resource: JobResource, namespace: str, job_name: str) -> str | None:
    """Name of the rank-0 pod of a job (a TrainJob's ``node`` index 0, a PyTorchJob's master)."""
    names = [pod["metadata"]["name"] for pod in await client.list_job_pods(resource, namespace, job_name)]
    return next((name for name in names if resource.is_rank0_pod(job_name, name)), None)


async def follow_log(
    client: KubeClient,
    resource: JobResource,
    namespace: str,
    job_name: str,
    pod_log: PodLog,
    *,
    clock: Clock,
    start_timeout: float = LOG_START_TIMEOUT_SECONDS,
) -> None:
    """Stream the rank-0 pod's log into ``pod_log`` until the container ends.

    The pod may not exist yet, and its log answers 400 while the container waits to
    start: both are asked again every few seconds, for at most ``start_timeout``.
    Best effort: the status watch decides the outcome, never the log.
    """
    deadline = clock.monotonic() + start_timeout
    while True:
        try:
            pod = await node0_pod(client, resource, namespace, job_name)
            if pod is not None:
                pod_log.found(pod)
                async for line in client.stream_log(namespace, pod):
                    pod_log.pod_line(line)
                return
        except asyncio.CancelledError:
            raise
        except KubeApiError as exc:
            if exc.status not in (400, 404) or clock.monotonic() >= deadline:
                pod_log(f"Log streaming stopped: {exc}")
                return
        except Exception as exc:  # a dropped connection: the tail is copied at the end instead
            pod_log(f"Log streaming stopped: {type(exc).__name__}")
            return
        if clock.monotonic() >= deadline:
            return
        await clock.asleep(LOG_RETRY_SECONDS)


async def copy_log_tail(
    client: KubeClient,
    resource: JobResource,
    namespace: str,
    job_name: str,
    pod_log: PodLog,
    tail_lines: int = TAIL_LINES,
) -> None:
    try:
        pod = await node0_pod(client, resource, namespace, job_name)
        if pod is None:
            return
        pod_log.found(pod)
        for line in (await client.read_log_tail(namespace, pod, tail_lines)).splitlines():
            pod_log.pod_line(line)
    except KubeApiError as exc:
        pod_log(f"Could not read the training pod log: {exc}")

"""A job's progress while the wait follows it: ``status.trainerStatus`` from the watched objects,
else the rank-0 pod's ``step ...`` lines, read every ``LOG_POLL_SECONDS``.

The trigger and the worker's blocking wait both run :func:`~.watch.follow_job`, which runs this:
one way for both. The status costs nothing (the watch receives the objects anyway); the log is
read only while the job runs and has not reported a trainerStatus, as a short tail from the last
line read on, so a long run is never read twice. Best effort: a log that cannot be read is tried
again at the next poll, and never changes how the wait ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_sft.core.backends.kubernetes.client import KubeClient
from airflow_provider_sft.core.backends.kubernetes.kinds import JobResource
from airflow_provider_sft.core.backends.kubernetes.logs import LogCursor, rank0_pod
from airflow_provider_sft.core.backends.kubernetes.retry import KubeApiError
from airflow_provider_sft.core.clock import Clock
from airflow_provider_sft.core.results.live_progress import (
    LiveProgress,
    ProgressSink,
    from_progress_line,
    from_trainer_status,
    say_when_due,
)

LOG_POLL_SECONDS = 15.0  # how often the rank-0 pod's log is read for progress when there is no status
FINAL_READ_SECONDS = 10.0  # the last read after the job ended waits no longer
LOG_TAIL_LINES = 200  # of the log since the last read: a step line is among them at ~20 a run


@dataclass
class ProgressFollower:
    """Feeds a :class:`LiveProgress` from the watched objects and the rank-0 pod's log."""

    client: KubeClient
    resource: JobResource
    namespace: str
    name: str
    clock: Clock
    sink: ProgressSink
    tracker: LiveProgress = field(default_factory=LiveProgress)
    started: asyncio.Event = field(default_factory=asyncio.Event)  # it ran: its pod log may hold step lines
    cursor: LogCursor = field(default_factory=LogCursor)  # where the next read of the log starts

    def observe_job(self, job: dict[str, Any] | None) -> None:
        """A read or watched object: its trainerStatus, when it has one."""
        self.tracker.observe(from_trainer_status(job))
        say_when_due(self.tracker, self.sink, self.clock.monotonic())

    async def read_log(self) -> None:
        """The step lines the rank-0 pod wrote since the last read."""
        if not self.started.is_set() or self.tracker.from_trainer_status:
            return
        pod = await rank0_pod(self.client, self.resource, self.namespace, self.name)
        if pod is None:
            return
        lines = await self.client.read_log(
            self.namespace,
            pod["metadata"]["name"],
            self.resource.container,
            tail_lines=LOG_TAIL_LINES,
            since_time=self.cursor.since_time,
        )
        take = self.cursor.reader(lambda text: self.tracker.observe(from_progress_line(text)))
        for line in lines:
            take(line)
        say_when_due(self.tracker, self.sink, self.clock.monotonic())

    async def finish(self) -> None:
        """The job ended: its last step lines, and the last reading said if it was not yet."""
        self.started.set()  # a short job may end before the wait saw it run: its log is read all the same
        with contextlib.suppress(KubeApiError, OSError, asyncio.TimeoutError):
            await asyncio.wait_for(self.read_log(), FINAL_READ_SECONDS)
        say_when_due(self.tracker, self.sink, self.clock.monotonic(), final=True)

    async def poll_log(self) -> None:
        """Read the log every ``LOG_POLL_SECONDS`` from the job's start until cancelled (the wait ended)."""
        await self.started.wait()
        while True:
            await self.clock.asleep(LOG_POLL_SECONDS)
            await asyncio.sleep(0)  # a clock that does not suspend (a test's) must not starve the wait
            try:
                await self.read_log()
            except asyncio.CancelledError:
                raise
            except (KubeApiError, OSError, asyncio.TimeoutError):
                continue  # not yet started, a cut connection: the next poll tries again

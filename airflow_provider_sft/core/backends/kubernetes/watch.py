"""Waiting for a training job (TrainJob or PyTorchJob) to end with one watch, not a poll loop.

The only wait there is: the triggerer awaits :func:`follow_job`; the worker's blocking wait runs the
same coroutine under ``asyncio.run``. The decisions live in :class:`WatchCursor`,
which does no I/O and reads time only from what it is given, so they are unit
tested on a fake clock:

* read the job, then watch it from its resourceVersion; a 410 Gone (the version was
  compacted) re-reads and watches again; a DELETED event or a vanished job is a failure;
* an API server restart (no answer, 5xx, a bare 404 while the CRD re-registers) is
  waited out with backoff, for at most ``MAX_OUTAGE_SECONDS`` in a row; a 403 or any
  other refusal ends the wait at once;
* a job that has not started (pending pods, or suspended in a queue) is looked at
  every ``PENDING_POLL_SECONDS``: its pods' waiting reasons and Warning events are
  reported, and ``start_timeout_seconds`` bounds how long it may stay so;
* a job suspended after it started (Kueue preempted it) is *preempted*, reported once, not a
  failure and not held to the start timeout: only ``timeout_seconds`` bounds the wait for its
  readmission, which is reported too (its pods start again and resume from their saved state);
* with ``on_progress``, the job's progress is read as it runs (:mod:`.progress`: its trainerStatus
  from the objects the watch receives, else the rank-0 pod's step lines) and said when due;
* ``timeout_seconds`` bounds the whole wait, and ``start_timeout_seconds`` the time before the
  start, even while a call hangs on a server that does not answer (frozen, half-open): a deadline
  that passed ends the wait ``DEADLINE_GRACE_SECONDS`` later, whatever the call in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from airflow_provider_sft.core.backends.kubernetes.client import KubeClient
from airflow_provider_sft.core.backends.kubernetes.informer import JobInformer, is_followed, slim
from airflow_provider_sft.core.backends.kubernetes.kinds import JobResource
from airflow_provider_sft.core.backends.kubernetes.progress import ProgressFollower
from airflow_provider_sft.core.backends.kubernetes.retry import (
    KubeApiError,
    Reconnect,
    as_api_error,
    is_transient,
    watch_error,
)
from airflow_provider_sft.core.backends.kubernetes.status import (
    GONE,
    JobPhase,
    JobState,
    classify_job_status,
    pending_reasons,
)
from airflow_provider_sft.core.clock import Clock
from airflow_provider_sft.core.results.live_progress import ProgressSink

WATCH_WINDOW_SECONDS = 300  # a healthy watch is re-opened (from its resourceVersion) this often
PENDING_POLL_SECONDS = 30  # how often the pods and events of a job that has not started are read
MAX_OUTAGE_SECONDS = 600  # the longest run of failed calls a wait rides out
#: How long after a deadline a call in flight may still answer (the server ends a watch at the
#: deadline itself) before the wait stops waiting for it.
DEADLINE_GRACE_SECONDS = 2.0


@dataclass(frozen=True)
class WaitResult:
    """How a wait ended: a terminal state, or a timeout (``"start"`` or ``"run"``) in ``state``."""

    state: JobState
    timeout: str | None = None
    pending: tuple[str, ...] = ()  # the last reasons seen for pods that did not run


@dataclass
class WatchCursor:
    """Where a wait stands, and what to do next. Pure: no I/O, time passed in."""

    namespace: str
    name: str
    started_at: float
    kind: str = "TrainJob"  # for messages
    timeout_seconds: float | None = None
    start_timeout_seconds: float | None = None
    on_state: Callable[[JobState], None] = lambda _state: None
    on_job: Callable[[dict[str, Any]], None] = lambda _job: None  # every object read or watched
    last: JobState | None = None
    resource_version: str | None = None  # None: (re-)read before watching
    started: bool = False  # running was seen once: the start timeout no longer applies
    pending: tuple[str, ...] = ()
    next_pending_check: float = 0.0
    failing_since: float | None = None
    reconnect: Reconnect = field(default_factory=Reconnect)  # paces re-reads and re-opened watches

    # --- what the server said ---------------------------------------------------------------

    def observe(self, job: dict[str, Any] | None) -> JobState | None:
        """Take a read or watched object; returns the terminal state when the wait is over."""
        if job is None:
            return GONE
        self.on_job(job)
        self.resource_version = (job.get("metadata") or {}).get("resourceVersion", self.resource_version)
        state = self.seen(classify_job_status(job))
        self.started = self.started or state.phase.started
        if state != self.last:
            self.on_state(state)
            self.last = state
        return state if state.terminal else None

    def seen(self, state: JobState) -> JobState:
        """The state in the light of what this wait saw before: a job suspended after it ran was
        preempted (a queued one was not), and the first other state after that is its readmission."""
        if state.phase is JobPhase.SUSPENDED and self.started:
            state = replace(state, phase=JobPhase.PREEMPTED)
        if self.last is None or self.last.phase is not JobPhase.PREEMPTED:
            return state
        if state.phase is JobPhase.PREEMPTED:
            # One preemption, reported once: the queue's spec.suspend is often seen before the
            # controller's Suspended condition, which adds only its wording.
            return self.last
        return state if state.terminal else replace(state, readmitted=True)

    def event(self, kind: str, obj: Any) -> JobState | None:
        """Take one watch event; returns the terminal state when the wait is over."""
        if kind == "ERROR":
            if error := watch_error(f"Watch {self.kind} {self.namespace}/{self.name}", obj):
                raise error
            self.resource_version = None  # compacted: read again, then watch from the new version
            return None
        if kind == "BOOKMARK":
            self.resource_version = obj["metadata"]["resourceVersion"]
            return None
        if kind == "DELETED":
            return GONE
        return self.observe(obj)

    def succeeded_call(self) -> None:
        """The wait got somewhere: the job changed, or a watch lasted its window."""
        self.failing_since = None
        self.reconnect.reset()

    def unproductive_round(self) -> float:
        """A watch ended early without a change (a 410 for a version the server no longer has, a
        server that closes watches as it restarts): the seconds to wait before reading again.
        None the first time, then jittered exponential: never a tight loop of read + watch."""
        return self.reconnect.next_delay()

    def failed_call(self, exc: BaseException, now: float) -> float:
        """Decide about a failed call: the seconds to back off before trying again, or raise.

        Ridden out: no answer, 429/5xx, 410 (re-read) and a 404 that is not about our object
        (the CRD is being registered again after a restart). Raised: everything else, a 403
        first of all, and any outage longer than ``MAX_OUTAGE_SECONDS``.
        """
        if not (isinstance(exc, KubeApiError) or getattr(exc, "status", None) or is_transient(exc)):
            raise exc  # not the server's doing (a bug): never ridden out
        error = as_api_error(f"Watch {self.kind} {self.namespace}/{self.name}", exc)
        if error.status == 410:
            self.resource_version = None
            return 0.0
        re_registering = error.status == 404 and not error.object_not_found
        if not (is_transient(error) or re_registering):
            raise error
        self.failing_since = now if self.failing_since is None else self.failing_since
        if now - self.failing_since > MAX_OUTAGE_SECONDS:
            raise error
        self.resource_version = None  # after an outage, read the job again before watching
        return self.reconnect.next_delay(immediate_first=False)

    # --- what to do next ------------------------------------------------------------------

    def timed_out(self, now: float) -> str | None:
        """``"run"``/``"start"`` when that deadline has passed, else None."""
        if self.timeout_seconds is not None and now - self.started_at >= self.timeout_seconds:
            return "run"
        if (
            not self.started
            and self.start_timeout_seconds is not None
            and now - self.started_at >= self.start_timeout_seconds
        ):
            return "start"
        return None

    def next_deadline(self) -> tuple[str, float] | None:
        """The deadline that applies now and when it is, on the clock: ``("start", t)`` while the job
        has not started (when it is the earlier one), else ``("run", t)``; None without one."""
        deadlines = []
        if not self.started and self.start_timeout_seconds is not None:
            deadlines.append(("start", self.started_at + self.start_timeout_seconds))
        if self.timeout_seconds is not None:
            deadlines.append(("run", self.started_at + self.timeout_seconds))
        return min(deadlines, key=lambda deadline: deadline[1], default=None)

    def pending_check_due(self, now: float) -> bool:
        return not self.started and now >= self.next_pending_check

    def checked_pending(self, now: float, reasons: tuple[str, ...]) -> None:
        self.next_pending_check = now + PENDING_POLL_SECONDS
        self.pending = reasons or self.pending

    def window(self, now: float) -> int:
        """Seconds for the next watch: never past a deadline, short while the job has not started."""
        limits: list[float] = [WATCH_WINDOW_SECONDS]
        if self.timeout_seconds is not None:
            limits.append(self.started_at + self.timeout_seconds - now)
        if not self.started:
            limits.append(self.next_pending_check - now)
            if self.start_timeout_seconds is not None:
                limits.append(self.started_at + self.start_timeout_seconds - now)
        return max(1, int(min(limits) + 0.999))

    def result(self, state: JobState | None = None, timeout: str | None = None) -> WaitResult:
        return WaitResult(state or self.last or JobState(JobPhase.PENDING), timeout, self.pending)


@dataclass
class PendingReporter:
    """Reads why a job's pods do not run and reports each new reason once."""

    client: KubeClient
    resource: JobResource
    namespace: str
    name: str
    on_note: Callable[[str], None]
    reported: set[str] = field(default_factory=set)
    unreadable: bool = False

    async def __call__(self) -> tuple[str, ...]:
        try:
            pods = await self.client.list_job_pods(self.resource, self.namespace, self.name)
            events: list[dict[str, Any]] = []
            for involved in [self.name, *(pod["metadata"]["name"] for pod in pods)]:
                events += await self.client.list_events(self.namespace, involved)
        except KubeApiError as exc:
            if not self.unreadable:  # the wait goes on without them; say so once
                self.on_note(
                    f"Cannot read the pods and events of {self.resource.kind.value} {self.name}: {exc}"
                )
                self.unreadable = True
            return ()
        reasons = tuple(pending_reasons(pods, events))
        for reason in reasons:
            if reason not in self.reported:
                self.reported.add(reason)
                self.on_note(f"{self.resource.kind.value} {self.name} not running yet: {reason}")
        return reasons


async def follow_job(
    client: KubeClient,
    resource: JobResource,
    namespace: str,
    name: str,
    *,
    clock: Clock,
    timeout_seconds: float | None = None,
    start_timeout_seconds: float | None = None,
    on_state: Callable[[JobState], None] = lambda _state: None,
    on_note: Callable[[str], None] = lambda _note: None,
    idle_timeout: float | None = None,
    on_progress: ProgressSink | None = None,
    informer: JobInformer | None = None,
) -> WaitResult:
    """Wait for the job to end or a deadline to pass (see the module docstring).

    With ``informer`` (the triggerer's shared watch of the job's kind and namespace), the job's
    changes come from it instead of a watch of its own; a job without the provider's label, which
    that watch does not see, is still watched on its own.
    """
    progress = None
    if on_progress is not None:
        progress = ProgressFollower(client, resource, namespace, name, clock, on_progress)

    def seen(state: JobState) -> None:
        if progress is not None and state.phase is JobPhase.RUNNING:
            progress.started.set()
        on_state(state)

    cursor = WatchCursor(
        namespace,
        name,
        clock.monotonic(),
        resource.kind.value,
        timeout_seconds,
        start_timeout_seconds,
        on_state=seen,
        on_job=progress.observe_job if progress is not None else lambda _job: None,
    )
    report_pending = PendingReporter(client, resource, namespace, name, on_note)
    if informer is not None:
        wait = _follow_shared(client, resource, cursor, report_pending, clock, idle_timeout, informer)
    else:
        wait = _watch(client, resource, cursor, report_pending, clock, idle_timeout)
    watching = asyncio.ensure_future(wait)
    polling = asyncio.ensure_future(progress.poll_log()) if progress is not None else None
    try:
        while True:
            deadline = cursor.next_deadline()
            bound = None
            if deadline is not None:
                bound = max(0.0, deadline[1] - clock.monotonic()) + DEADLINE_GRACE_SECONDS
            done, _ = await asyncio.wait({watching}, timeout=bound)
            if done:
                waited = watching.result()
                if progress is not None and waited.timeout is None:
                    await _stop(polling)
                    await progress.finish()  # the last step lines, the last reading said
                return waited
            if deadline is not None and cursor.next_deadline() == deadline:  # passed, the server silent
                return cursor.result(timeout=deadline[0])
    finally:
        await _stop(watching)
        await _stop(polling)


async def _stop(task: asyncio.Future | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def _watch(
    client: KubeClient,
    resource: JobResource,
    cursor: WatchCursor,
    report_pending: PendingReporter,
    clock: Clock,
    idle_timeout: float | None,
) -> WaitResult:
    """Read, watch, re-read: the wait's calls, until the job ends or the cursor says a deadline passed."""
    namespace, name = cursor.namespace, cursor.name
    while True:
        try:
            if cursor.resource_version is None and (
                done := cursor.observe(await client.get_job(resource, namespace, name))
            ):
                return cursor.result(done)
            if cursor.pending_check_due(clock.monotonic()):
                cursor.checked_pending(clock.monotonic(), await report_pending())
            if timeout := cursor.timed_out(clock.monotonic()):
                return cursor.result(timeout=timeout)
            window = cursor.window(clock.monotonic())
            opened, changed = clock.monotonic(), False
            async for event in client.watch_job(
                resource, namespace, name, cursor.resource_version, window, idle_timeout
            ):
                if event["type"] in ("ADDED", "MODIFIED"):
                    changed = True
                    cursor.succeeded_call()
                if done := cursor.event(event["type"], event["object"]):
                    return cursor.result(done)
                if cursor.resource_version is None or cursor.pending_check_due(clock.monotonic()):
                    break
            if changed or clock.monotonic() - opened >= window - 1:
                cursor.succeeded_call()  # a healthy watch: ended by the server after its window
            else:
                await clock.asleep(cursor.unproductive_round())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if ridden_out := await _ride_out(cursor, exc, clock):
                return ridden_out


async def _ride_out(cursor: WatchCursor, exc: BaseException, clock: Clock) -> WaitResult | None:
    """After a failed call: the wait's timeout result once its deadline has passed (a refusal is
    raised by ``failed_call``), else None after the backoff's pause, for the caller to try again."""
    delay = cursor.failed_call(exc, clock.monotonic())
    if timeout := cursor.timed_out(clock.monotonic()):
        return cursor.result(timeout=timeout)
    await clock.asleep(delay)
    return None


def _newer(job: dict[str, Any] | None, seen: str | None) -> bool:
    """Whether ``job`` is not older than the version the wait last saw: a join-time read that
    answers after the shared watch brought a later change must not undo it. resourceVersions are
    opaque; where both read as integers (etcd's revisions) they are compared, else taken as newer."""
    if job is None or seen is None:
        return True
    version = str((job.get("metadata") or {}).get("resourceVersion") or "")
    return not (version.isdigit() and seen.isdigit() and int(version) < int(seen))


async def _follow_shared(
    client: KubeClient,
    resource: JobResource,
    cursor: WatchCursor,
    report_pending: PendingReporter,
    clock: Clock,
    idle_timeout: float | None,
    informer: JobInformer,
) -> WaitResult:
    """The wait on the triggerer's shared watch: join it, read the job once, then take what it brings.

    The waiter joins before it reads, so a change between the read and the watch's next event is
    not missed; what the watch brings runs the cursor in the informer's own step (no task per event).
    The pending checks and deadlines are this loop's, as in :func:`_watch`.
    """
    ended: asyncio.Future[WaitResult] = asyncio.get_running_loop().create_future()

    def take(job: dict[str, Any] | None) -> None:
        if ended.done() or not _newer(job, cursor.resource_version):
            return
        try:
            state = cursor.observe(job)
        except Exception as exc:  # a callback's failure ends this wait, not the shared watch
            ended.set_exception(exc)
            return
        if state is not None:
            ended.set_result(cursor.result(state))

    def fail(exc: BaseException) -> None:
        if not ended.done():
            ended.set_exception(exc)

    with informer.waiting(cursor.name, take, fail):
        while True:  # the join-time read, an outage ridden out as the watch of one job does
            try:
                async with informer.join_reads:
                    job = await client.get_job(resource, cursor.namespace, cursor.name)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if ridden_out := await _ride_out(cursor, exc, clock):
                    return ridden_out
        cursor.succeeded_call()
        if job is not None and not is_followed(job):
            return await _watch(client, resource, cursor, report_pending, clock, idle_timeout)
        take(None if job is None else slim(job))
        del job  # the whole object (its spec is most of it) is not kept for the length of the wait
        while not ended.done():
            now = clock.monotonic()
            if timeout := cursor.timed_out(now):
                return cursor.result(timeout=timeout)
            if cursor.pending_check_due(now):
                cursor.checked_pending(now, await report_pending())
                continue
            await asyncio.wait({ended}, timeout=cursor.window(now))
        return ended.result()

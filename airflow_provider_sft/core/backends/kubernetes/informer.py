"""One shared watch per (connection, namespace, kind of job) in the triggerer, fanned out by job name.

A triggerer following 10,000 deferred train tasks with one watch each holds 10,000 connections to
the API server, and a server restart makes each of them read its job again. Kubernetes' own
controllers use one informer per resource instead; so does the triggerer here:

* one list + watch of the jobs of a kind in a namespace that carry this provider's label
  (``app.kubernetes.io/managed-by=airflow-provider-sft``), listed in pages of ``LIST_PAGE_SIZE``,
  watched with bookmarks and resumed from the last resourceVersion;
* each event goes to the waiters of that job's name only (a dict from name to waiters: O(1) per
  event, whatever the number of waiters), which run their pure :class:`~.watch.WatchCursor` on it;
* a 410 (the version was compacted) lists again; an API-server restart is ridden out by watching
  again from the last version (a list only when the server no longer has it), reconnecting after a
  jittered backoff (:class:`~.retry.Reconnect`) so that triggerers do not come back in step;
* no cache of objects: a waiter checks its job once when it joins (a GET, so nothing between its
  start and the first event is missed) and the watch brings every change after that. The list
  after a 410 is handed to the waiters and dropped page by page;
* a refusal (403) or an outage longer than ``MAX_OUTAGE_SECONDS`` ends it: each waiter gets the
  error, as its own watch would have raised it;
* :class:`SharedWatches` counts its users: the first waiter starts it, the last one stops it.

The worker's blocking wait keeps its own watch of one job (:func:`~.watch.follow_job` without an
informer): one per worker is fine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends.kubernetes.client import KubeClient
from airflow_provider_sft.core.backends.kubernetes.kinds import JobResource
from airflow_provider_sft.core.backends.kubernetes.retry import (
    Reconnect,
    as_api_error,
    is_transient,
    watch_error,
)
from airflow_provider_sft.core.clock import SYSTEM_CLOCK, Clock

#: The jobs this provider creates carry this label (``KubernetesBackend.labels``); the watch selects them.
PROVIDER_SELECTOR = f"{c.LABEL_MANAGED_BY}={c.MANAGED_BY_VALUE}"
LIST_PAGE_SIZE = 500  # items per list request, as client-go's reflector pages
WATCH_WINDOW_SECONDS = 300  # the shared watch is re-opened from its resourceVersion this often
MAX_OUTAGE_SECONDS = 600  # as a waiter's own watch: the longest run of failed calls ridden out
#: How many waiters read their job at once when they join: 10,000 triggers starting together
#: must not open 10,000 connections (their buffers are most of a triggerer's peak memory).
JOIN_READS_IN_FLIGHT = 32

Take = Callable[[dict[str, Any] | None], None]  # an object of the waiter's job; None: it is gone
Fail = Callable[[BaseException], None]


def slim(job: dict[str, Any]) -> dict[str, Any]:
    """What a waiter reads of a job (its kind, name, version, labels, suspension and status),
    not its spec: a TrainJob's spec is most of its size, and 10,000 of them add up."""
    metadata = job.get("metadata") or {}
    spec = job.get("spec") or {}
    kept_spec: dict[str, Any] = {}
    if "suspend" in spec:
        kept_spec["suspend"] = spec["suspend"]
    if "suspend" in (spec.get("runPolicy") or {}):
        kept_spec["runPolicy"] = {"suspend": spec["runPolicy"]["suspend"]}
    return {
        "kind": job.get("kind"),
        "metadata": {
            "name": metadata.get("name"),
            "resourceVersion": metadata.get("resourceVersion"),
            "labels": metadata.get("labels") or {},
        },
        "spec": kept_spec,
        "status": job.get("status") or {},
    }


def is_followed(job: dict[str, Any]) -> bool:
    """Whether the shared watch sees this job (it has the provider's label)."""
    labels = (job.get("metadata") or {}).get("labels") or {}
    return labels.get(c.LABEL_MANAGED_BY) == c.MANAGED_BY_VALUE


class JobInformer:
    """The shared list + watch of one kind of job in one namespace (see the module docstring)."""

    def __init__(
        self,
        client: KubeClient,
        resource: JobResource,
        namespace: str,
        *,
        clock: Clock = SYSTEM_CLOCK,
        watch_window_seconds: int = WATCH_WINDOW_SECONDS,
        idle_timeout: float | None = None,
    ) -> None:
        """``idle_timeout``: how long the watch may stay silent before its connection is taken for
        dead and re-opened (default: its window plus the client's margin, as a waiter's own)."""
        self.client, self.resource, self.namespace = client, resource, namespace
        self.clock, self.watch_window_seconds, self.idle_timeout = clock, watch_window_seconds, idle_timeout
        self.waiters: dict[str, dict[int, tuple[Take, Fail]]] = {}  # job name -> waiter id -> callbacks
        self.resource_version: str | None = None  # None: list before watching
        self.lists = 0  # complete lists so far (the first one included)
        self.join_reads = asyncio.Semaphore(JOIN_READS_IN_FLIGHT)
        self.failure: BaseException | None = None  # why it ended (a refusal, a long outage)
        self._reconnect = Reconnect()
        self._task: asyncio.Task | None = None

    # --- waiters --------------------------------------------------------------------------

    @contextlib.contextmanager
    def waiting(self, name: str, take: Take, fail: Fail) -> Iterator[None]:
        """``take`` gets every object of job ``name`` the watch or a list brings while inside."""
        if self.failure is not None:
            raise self.failure
        key = id(take)
        self.waiters.setdefault(name, {})[key] = (take, fail)
        try:
            yield
        finally:
            waiters = self.waiters.get(name)
            if waiters is not None:
                waiters.pop(key, None)
                if not waiters:
                    del self.waiters[name]

    def _dispatch(self, name: str, job: dict[str, Any] | None) -> None:
        waiters = self.waiters.get(name)
        if not waiters:
            return
        for take, _ in list(waiters.values()):
            take(job)

    def _fail_all(self, exc: BaseException) -> None:
        self.failure = exc
        for waiters in list(self.waiters.values()):
            for _, fail in list(waiters.values()):
                fail(exc)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    # --- list and watch -------------------------------------------------------------------

    async def _list(self) -> None:
        """List every followed job, page by page, handing each to its waiters; then check the jobs
        of waiters that were waiting before the list and are not in it (deleted while not watched,
        or without the label) with a read of their own."""
        waited_before = set(self.waiters)
        listed: set[str] = set()
        token: str | None = None
        while True:
            page = await self.client.list_jobs_page(
                self.resource, self.namespace, PROVIDER_SELECTOR, limit=LIST_PAGE_SIZE, continue_token=token
            )
            for item in page.get("items") or []:
                name = item["metadata"]["name"]
                listed.add(name)
                if name in self.waiters:
                    # a list's items carry neither kind nor apiVersion: the kind is this informer's
                    self._dispatch(name, slim({**item, "kind": self.resource.kind.value}))
            metadata = page.get("metadata") or {}
            token = metadata.get("continue") or None
            if token is None:
                self.resource_version = metadata.get("resourceVersion")
                break
        self.lists += 1
        for name in waited_before - listed:
            if name in self.waiters:
                async with self.join_reads:
                    job = await self.client.get_job(self.resource, self.namespace, name)
                self._dispatch(name, None if job is None else slim(job))

    async def _watch(self) -> bool:
        """One watch from the last version; True when it got somewhere (a change, or its window)."""
        assert self.resource_version is not None
        opened, changed = self.clock.monotonic(), False
        async for event in self.client.watch_jobs(
            self.resource,
            self.namespace,
            PROVIDER_SELECTOR,
            self.resource_version,
            self.watch_window_seconds,
            self.idle_timeout,
        ):
            kind, obj = event["type"], event["object"]
            if kind == "ERROR":
                if error := watch_error(f"Watch {self.resource.kind.value}s in {self.namespace}", obj):
                    raise error
                self.resource_version = None  # compacted: list again, then watch from the list's version
                return changed
            self.resource_version = obj["metadata"]["resourceVersion"]
            if kind == "BOOKMARK":
                continue
            changed = True
            self._reconnect.reset()
            name = obj["metadata"]["name"]
            self._dispatch(name, None if kind == "DELETED" else slim(obj))
        return changed or self.clock.monotonic() - opened >= self.watch_window_seconds - 1

    async def _run(self) -> None:
        failing_since: float | None = None
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                    failing_since = None
                if await self._watch():
                    failing_since = None
                    self._reconnect.reset()
                else:  # ended early without a change: never a tight loop of list + watch
                    await self.clock.asleep(self._reconnect.next_delay())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = as_api_error(f"Watch {self.resource.kind.value}s in {self.namespace}", exc)
                if error.status == 410:  # a list's continue token or version expired: list again
                    self.resource_version = None
                    continue
                now = self.clock.monotonic()
                failing_since = now if failing_since is None else failing_since
                outage = is_transient(error) or (error.status == 404 and not error.object_not_found)
                if not outage or now - failing_since > MAX_OUTAGE_SECONDS:
                    self._fail_all(error)
                    return
                # An API-server restart: watch again from the last version (etcd kept it); the
                # server answers 410 if it no longer has it, and only then is everything listed.
                await self.clock.asleep(self._reconnect.next_delay(immediate_first=False))


class SharedWatches:
    """The informers of one process, counted by their users: one per key (a connection, an event
    loop, a kind of job and a namespace), started by the first user and stopped by the last.

    ``opener`` builds the informer on resources it enters into the stack it is given (the API
    client it borrows): they are closed after the informer stops, with its last user.
    """

    def __init__(self) -> None:
        self._entries: dict[Any, list[Any]] = {}  # key -> [informer, users, exit stack]
        self._locks: dict[Any, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def use(
        self, key: Any, opener: Callable[[contextlib.AsyncExitStack], Awaitable[JobInformer]]
    ) -> AsyncIterator[JobInformer]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            entry = self._entries.get(key)
            if entry is None or entry[0].failure is not None:  # one that ended on an error is replaced
                stack = contextlib.AsyncExitStack()
                entry = [await opener(stack), 0, stack]
                self._entries[key] = entry
                entry[0].start()
            entry[1] += 1
        try:
            yield entry[0]
        finally:
            async with lock:
                entry[1] -= 1
                if entry[1] == 0:
                    if self._entries.get(key) is entry:
                        del self._entries[key]
                    await entry[0].stop()
                    await entry[2].aclose()

    def __len__(self) -> int:
        return len(self._entries)


SHARED_WATCHES = SharedWatches()

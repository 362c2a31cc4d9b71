"""``TrainingJobTrigger``: follows ONE training job (TrainJob or PyTorchJob) from the triggerer with a watch.

It was ``triggers.trainjob.TrainJobTrigger``; that path still imports it, for the triggers an
earlier version serialized into the database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from functools import cached_property
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_sft.core.backends.base import JobHandle
from airflow_provider_sft.core.backends.kubernetes import result_of
from airflow_provider_sft.core.backends.kubernetes.backend import delete_job_and_owned, job_namespace
from airflow_provider_sft.core.backends.kubernetes.informer import JobInformer
from airflow_provider_sft.core.backends.kubernetes.kinds import JobResource, resource_of
from airflow_provider_sft.core.backends.kubernetes.watch import follow_job
from airflow_provider_sft.core.clock import SYSTEM_CLOCK, Clock
from airflow_provider_sft.core.results.live_progress import PROGRESS_XCOM_KEY, LiveProgress, progress_text
from airflow_provider_sft.hooks.sft import SFTTrainingHook
from airflow_provider_sft.triggers.events import EventStatus, TrainJobEvent
from airflow_provider_sft.version_compat import AIRFLOW_V_3_3_PLUS

PUBLISH_WAIT_SECONDS = 10.0  # how long the last progress may take to be stored before the event


class TrainingJobTrigger(BaseTrigger):
    """Wait for a TrainJob or a PyTorchJob to end.

    The triggers of one triggerer share one watch per connection, namespace and kind of job
    (:mod:`~airflow_provider_sft.core.backends.kubernetes.informer`); each reads its own job once
    when it starts.

    :param job: the run's ``JobHandle.to_dict()`` (``name``, ``namespace``, ``kind``, ``output_dir``...;
        an earlier version's shape too); the event carries it back, so the operator resumes on
        exactly these coordinates.
    :param kubernetes_conn_id: connection to reach the cluster.
    :param deadline: absolute UTC deadline (ISO-8601) of the run, or None. Deadlines cross
        the deferral as wall-clock times so a triggerer restart does not extend the wait.
    :param start_deadline: absolute UTC deadline for the job to start (leave its queue and
        have its pods running), or None; ``start_timeout_seconds`` is its length, for the message.
    :param start_timeout: the name of ``start_timeout_seconds`` in triggers serialized before
        it said its unit: such a trigger, resumed by an upgraded triggerer, still reads it.
    :param delete_on_kill: delete the job when a user kills the task (Airflow >= 3.3
        calls ``on_kill`` only for user kills, never for a triggerer restart).
    """

    #: Follow the job on the triggerer's shared watch (False: a watch of its own, as before; the
    #: benchmark compares both). Not serialized: how a triggerer watches is not the task's business.
    use_shared_watch: bool = True

    def __init__(
        self,
        *,
        job: dict[str, Any],
        kubernetes_conn_id: str | None = SFTTrainingHook.default_conn_name,
        deadline: str | None = None,
        start_deadline: str | None = None,
        start_timeout_seconds: float | None = None,
        delete_on_kill: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        start_timeout: float | None = None,
    ) -> None:
        super().__init__()
        self.handle = JobHandle.from_dict(job)
        self.job = self.handle.to_dict()
        self.kubernetes_conn_id = kubernetes_conn_id
        self.deadline = deadline
        self.start_deadline = start_deadline
        self.start_timeout_seconds = start_timeout if start_timeout_seconds is None else start_timeout_seconds
        self.delete_on_kill = delete_on_kill
        self.clock = clock
        self._fired_event = False
        self._publishing: asyncio.Future | None = None
        self._publish_failed = False

    @property
    def name(self) -> str:
        return self.handle.name

    @property
    def namespace(self) -> str:
        return job_namespace(self.handle)

    @property
    def resource(self) -> JobResource:
        return resource_of(self.handle.kind)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job": self.job,
                "kubernetes_conn_id": self.kubernetes_conn_id,
                "deadline": self.deadline,
                "start_deadline": self.start_deadline,
                "start_timeout_seconds": self.start_timeout_seconds,
                "delete_on_kill": self.delete_on_kill,
            },
        )

    @cached_property
    def hook(self) -> SFTTrainingHook:
        return SFTTrainingHook(kubernetes_conn_id=self.kubernetes_conn_id)

    def _remaining(self, deadline: str | None) -> float | None:
        if deadline is None:
            return None
        return max(0.0, (datetime.fromisoformat(deadline) - self.clock.now()).total_seconds())

    def _progress(self, tracker: LiveProgress) -> None:
        """A progress line in the task log, and the progress for the Training results tab (an XCom of
        the task, stored through the triggerer's own API: no cluster access on the API server)."""
        assert tracker.said is not None
        self.log.info("%s", progress_text(tracker.said))
        payload = tracker.payload(self.name, updated=self.clock.now().isoformat())
        self._publishing = asyncio.ensure_future(self._publish(payload, self._publishing))

    async def _publish(self, payload: dict[str, Any], previous: asyncio.Future | None) -> None:
        """Store ``payload``, after the one before it (in order). Without a task instance (a trigger
        run inline by ``airflow dags test``) there is nowhere to store it; a failure is logged once."""
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous
        ti = self.task_instance
        if ti is None:
            return
        if not AIRFLOW_V_3_3_PLUS:  # a trigger stores XComs through the triggerer from 3.3 on
            if not self._publish_failed:
                self._publish_failed = True
                self.log.info(
                    "Live progress in the Training results tab needs Airflow 3.3+ (a trigger cannot store "
                    "an XCom before it): the progress lines are in this log, the tab fills when the task ends"
                )
            return
        from airflow.sdk.execution_time.xcom import XCom

        try:
            await XCom.aset(
                PROGRESS_XCOM_KEY,
                payload,
                dag_id=ti.dag_id,
                task_id=ti.task_id,
                run_id=ti.run_id,
                map_index=ti.map_index,
            )
        except Exception as exc:
            if not self._publish_failed:
                self._publish_failed = True
                self.log.warning("Could not store the progress for the Training results tab: %s", exc)

    async def _published(self) -> None:
        """Let the last progress reach the database before the event ends this trigger."""
        if self._publishing is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._publishing, PUBLISH_WAIT_SECONDS)

    def _event(self, event: TrainJobEvent) -> TriggerEvent:
        self._fired_event = True
        return TriggerEvent(event.to_payload())

    def _shared_watch(self) -> contextlib.AbstractAsyncContextManager[JobInformer | None]:
        if not self.use_shared_watch:
            return contextlib.nullcontext(None)
        return self.hook.shared_watch(self.resource, self.namespace, self.clock)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            async with self.hook.connect(self.clock) as client, self._shared_watch() as informer:
                waited = await follow_job(
                    client,
                    self.resource,
                    self.namespace,
                    self.name,
                    clock=self.clock,
                    timeout_seconds=self._remaining(self.deadline),
                    start_timeout_seconds=self._remaining(self.start_deadline),
                    on_state=lambda s: self.log.info(
                        "%s", s.line(f"{self.resource.kind.value} {self.namespace}/{self.name}")
                    ),
                    on_note=self.log.warning,
                    on_progress=self._progress,
                    informer=informer,
                )
                await self._published()
            result = result_of(
                self.namespace,
                self.name,
                waited,
                start_timeout_seconds=self.start_timeout_seconds,
                kind=self.resource.kind.value,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.error(
                "Lost track of %s %s/%s: %s", self.resource.kind.value, self.namespace, self.name, exc
            )
            yield self._event(TrainJobEvent(EventStatus.ERROR, self.job, message=str(exc)))
            return
        yield self._event(
            TrainJobEvent(EventStatus.of(result), self.job, result.to_payload(), result.message)
        )

    async def on_kill(self) -> None:
        """The task was killed while deferred: delete the job, its Secret and its ConfigMap.

        Not ``cleanup``: that runs on every exit, a triggerer restart included, after which
        another triggerer follows the same job on.
        """
        if self._fired_event or not self.delete_on_kill:
            return
        kind = self.resource.kind.value
        self.log.info("Task killed: deleting %s %s/%s", kind, self.namespace, self.name)
        try:
            async with self.hook.connect() as client:
                await delete_job_and_owned(client, self.handle)
        except Exception:
            self.log.exception("Could not delete %s %s/%s", kind, self.namespace, self.name)

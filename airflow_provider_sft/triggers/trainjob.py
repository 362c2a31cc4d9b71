"""``TrainJobTrigger``: follows ONE TrainJob from the triggerer with a watch, fires one event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from functools import cached_property
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_sft.core.clock import SYSTEM_CLOCK, Clock
from airflow_provider_sft.core.trainjob import JobPhase
from airflow_provider_sft.core.waiting import await_trainjob
from airflow_provider_sft.hooks.sft import SFTTrainingHook
from airflow_provider_sft.triggers.events import EventStatus, TrainJobEvent


class TrainJobTrigger(BaseTrigger):
    """Wait for a TrainJob to end.

    :param name: TrainJob name.
    :param namespace: its namespace.
    :param kubernetes_conn_id: connection to reach the cluster.
    :param deadline: absolute UTC deadline (ISO-8601) or None; it crosses the deferral as a
        wall-clock time so a triggerer restart does not extend the wait.
    :param delete_on_kill: delete the TrainJob when a user kills the task (Airflow >= 3.3
        calls ``on_kill`` only for user kills, never for a triggerer restart).
    """

    def __init__(
        self,
        *,
        name: str,
        namespace: str,
        kubernetes_conn_id: str | None = SFTTrainingHook.default_conn_name,
        deadline: str | None = None,
        delete_on_kill: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__()
        self.name = name
        self.namespace = namespace
        self.kubernetes_conn_id = kubernetes_conn_id
        self.deadline = deadline
        self.delete_on_kill = delete_on_kill
        self.clock = clock
        self._fired_event = False

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "name": self.name,
                "namespace": self.namespace,
                "kubernetes_conn_id": self.kubernetes_conn_id,
                "deadline": self.deadline,
                "delete_on_kill": self.delete_on_kill,
            },
        )

    @cached_property
    def hook(self) -> SFTTrainingHook:
        return SFTTrainingHook(kubernetes_conn_id=self.kubernetes_conn_id)

    def _remaining_seconds(self) -> float | None:
        if self.deadline is None:
            return None
        return (datetime.fromisoformat(self.deadline) - self.clock.now()).total_seconds()

    def _event(self, status: EventStatus, reason: str = "", message: str = "") -> TriggerEvent:
        self._fired_event = True
        return TriggerEvent(TrainJobEvent(status, self.name, self.namespace, reason, message).to_payload())

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            async with self.hook.get_async_conn() as client:
                state = await await_trainjob(
                    client,
                    self.namespace,
                    self.name,
                    clock=self.clock,
                    timeout_seconds=self._remaining_seconds(),
                    on_event=lambda s: self.log.info(
                        "TrainJob %s/%s: %s %s", self.namespace, self.name, s.phase.value, s.reason
                    ),
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            yield self._event(EventStatus.ERROR, type(exc).__name__, str(exc))
            return
        if state is None:
            yield self._event(EventStatus.TIMEOUT, "DeadlineExceeded", f"deadline {self.deadline} passed")
        elif state.phase is JobPhase.SUCCEEDED:
            yield self._event(EventStatus.SUCCESS, state.reason, state.message)
        else:
            yield self._event(EventStatus.FAILED, state.reason, state.message)

    async def on_kill(self) -> None:
        if self._fired_event or not self.delete_on_kill:
            return
        self.log.info("Task killed: deleting TrainJob %s/%s", self.namespace, self.name)
        try:
            async with self.hook.get_async_conn() as client:
                await client.delete_trainjob(self.namespace, self.name)
        except Exception:
            self.log.exception("Could not delete TrainJob %s/%s", self.namespace, self.name)

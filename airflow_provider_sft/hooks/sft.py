"""``SFTTrainingHook``: an Airflow connection (or the seed's environment variables) -> TrainJob clients.

It reuses the cncf.kubernetes ``kubernetes`` connection type (in-cluster, kubeconfig
path or content, context, namespace), so existing connections work unchanged. Like
the original KFP component it also honours ``KUBERNETES_SERVER_URL`` +
``KUBERNETES_AUTH_TOKEN`` from the environment (with ``KUBERNETES_CA_CERT`` or the
in-cluster CA); the token is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook, KubernetesHook
from airflow.sdk.bases.hook import BaseHook

from airflow_provider_sft.core.backends.kubernetes.client import (
    KubeClient,
    environment_configuration,
    environment_server,
)
from airflow_provider_sft.core.backends.kubernetes.informer import SHARED_WATCHES, JobInformer
from airflow_provider_sft.core.backends.kubernetes.kinds import JobResource
from airflow_provider_sft.core.backends.kubernetes.retry import RetryPolicy
from airflow_provider_sft.core.clock import SYSTEM_CLOCK, Clock


class SFTTrainingHook(BaseHook):
    """The async Kubernetes client for TrainJobs, runtimes, pods, events, logs and secrets.

    There is one client and it is async: the trigger awaits it, the operator's blocking
    calls run it under ``asyncio.run`` (see ``KubernetesBackend``).

    :param kubernetes_conn_id: a cncf.kubernetes ``kubernetes`` connection.
    """

    conn_name_attr = "kubernetes_conn_id"
    default_conn_name = "kubernetes_default"
    conn_type = "kubernetes"
    hook_name = "SFT Training on Kubernetes"

    def __init__(self, kubernetes_conn_id: str | None = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kubernetes_conn_id = kubernetes_conn_id

    @staticmethod
    def _env_server() -> tuple[str, str, str] | None:
        return environment_server()

    def get_namespace(self) -> str | None:
        if self._env_server() is not None:
            return None
        return KubernetesHook(conn_id=self.kubernetes_conn_id).get_namespace()

    @contextlib.asynccontextmanager
    async def connect(self, clock: Clock = SYSTEM_CLOCK) -> AsyncIterator[KubeClient]:
        """A client on the API client this process shares for this connection (and event loop).

        Every TrainingJobTrigger of one triggerer process that uses the same connection
        borrows the same ``kubernetes_asyncio`` client (one connection pool, watches
        multiplexed over it) instead of building its own: that keeps a triggerer
        following a thousand TrainJobs small. The client closes with its last user.
        """
        key = (self.kubernetes_conn_id, bool(self._env_server()))
        async with _SHARED_ASYNC_CLIENTS.borrow(key, self._open_async_api) as api:
            yield KubeClient(api, retry=RetryPolicy(clock=clock, log=self.log.warning))

    @contextlib.asynccontextmanager
    async def shared_watch(
        self, resource: JobResource, namespace: str, clock: Clock = SYSTEM_CLOCK
    ) -> AsyncIterator[JobInformer]:
        """The process's shared watch of ``resource`` jobs in ``namespace`` on this connection
        (:mod:`~airflow_provider_sft.core.backends.kubernetes.informer`): the first trigger that
        follows such a job starts it, the last one stops it."""
        key = (self.kubernetes_conn_id, bool(self._env_server()))

        async def open_informer(stack: contextlib.AsyncExitStack) -> JobInformer:
            api = await stack.enter_async_context(_SHARED_ASYNC_CLIENTS.borrow(key, self._open_async_api))
            client = KubeClient(api, retry=RetryPolicy(clock=clock, log=self.log.warning))
            return JobInformer(client, resource, namespace, clock=clock)

        watch_key = (key, id(asyncio.get_running_loop()), resource.plural, namespace)
        async with SHARED_WATCHES.use(watch_key, open_informer) as informer:
            yield informer

    async def _open_async_api(self, stack: contextlib.AsyncExitStack) -> Any:
        from kubernetes_asyncio import client

        if self._env_server() is None:
            config = client.Configuration()
            config.connection_pool_maxsize = ASYNC_POOL_SIZE  # one long-lived connection per watched job
            hook = AsyncKubernetesHook(conn_id=self.kubernetes_conn_id, client_configuration=config)
            return await stack.enter_async_context(hook.get_conn())
        config = environment_configuration()
        config.connection_pool_maxsize = ASYNC_POOL_SIZE
        return await stack.enter_async_context(client.ApiClient(config))


ASYNC_POOL_SIZE = 4096


class _SharedAsyncClients:
    """Reference-counted async API clients, one per (connection, event loop)."""

    def __init__(self) -> None:
        self._entries: dict[Any, list[Any]] = {}  # key -> [api, users, exit stack]
        self._locks: dict[Any, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def borrow(self, key: Any, opener: Any) -> AsyncIterator[Any]:
        key = (key, id(asyncio.get_running_loop()))
        async with self._locks.setdefault(key, asyncio.Lock()):
            entry = self._entries.get(key)
            if entry is None:
                stack = contextlib.AsyncExitStack()
                entry = [await opener(stack), 0, stack]
                self._entries[key] = entry
            entry[1] += 1
        try:
            yield entry[0]
        finally:
            async with self._locks[key]:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._entries[key]
                    await entry[2].aclose()


_SHARED_ASYNC_CLIENTS = _SharedAsyncClients()

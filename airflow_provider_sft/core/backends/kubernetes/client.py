"""The Kubernetes API calls the backend makes, one method each, on ``kubernetes_asyncio``.

There is one client, and it is async: the triggerer awaits it, the worker's
blocking calls run it under ``asyncio.run`` (as the cncf provider's
``await_pod_start`` does). Every request goes through the one
:class:`RetryPolicy` and has a request timeout, watches included: a half-open TCP
connection must not hang a worker or the triggerer.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends.kubernetes.kinds import JobResource
from airflow_provider_sft.core.backends.kubernetes.manifest import with_generation_hint
from airflow_provider_sft.core.backends.kubernetes.retry import KubeApiError, RetryPolicy

REQUEST_TIMEOUT = (10, 30)  # (connect, read) seconds for every plain request
# A healthy watch ends when the server closes it after its timeoutSeconds; one that is still
# silent this much later sits on a dead (half-open) connection, and is dropped and re-opened.
# Not shorter: servers need not send bookmarks in between (this test server sends none).
WATCH_TIMEOUT_MARGIN = 30
_TRAINER = (c.TRAINER_GROUP, c.TRAINER_VERSION)  # the runtimes' API
RUNTIME_PLURALS = {
    c.CLUSTER_TRAINING_RUNTIME_KIND: c.CLUSTER_TRAINING_RUNTIME_PLURAL,
    c.TRAINING_RUNTIME_KIND: c.TRAINING_RUNTIME_PLURAL,
}

SERVER_URL_ENV = "KUBERNETES_SERVER_URL"
AUTH_TOKEN_ENV = "KUBERNETES_AUTH_TOKEN"
CA_CERT_ENV = "KUBERNETES_CA_CERT"
IN_CLUSTER_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def environment_server() -> tuple[str, str, str] | None:
    """(url, token, CA path) from ``KUBERNETES_SERVER_URL``/``KUBERNETES_AUTH_TOKEN`` (the seed's
    variables), or None when they are not set. The token is never sent to an unverified server."""
    url, token = os.environ.get(SERVER_URL_ENV), os.environ.get(AUTH_TOKEN_ENV)
    if not url or not token:
        return None
    ca = os.environ.get(CA_CERT_ENV) or (IN_CLUSTER_CA if Path(IN_CLUSTER_CA).exists() else "")
    if not ca:
        raise ValueError(
            f"{SERVER_URL_ENV} is set but no CA certificate was found: set {CA_CERT_ENV} to the "
            "cluster CA bundle path (the token is not sent to an unverified server)"
        )
    return url, token, ca


def environment_configuration() -> Any:
    """A ``kubernetes_asyncio`` Configuration from the seed's variables, else the in-cluster account."""
    from kubernetes_asyncio import client, config

    server = environment_server()
    configuration = client.Configuration()
    if server is None:
        config.load_incluster_config(client_configuration=configuration)
        return configuration
    url, token, ca = server
    configuration.host, configuration.ssl_ca_cert = url, ca
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return configuration


@contextlib.asynccontextmanager
async def connect(configuration: Any, *, retry: RetryPolicy | None = None) -> AsyncIterator[KubeClient]:
    """A :class:`KubeClient` on a fresh API client for ``configuration``, closed on exit."""
    from kubernetes_asyncio import client

    async with client.ApiClient(configuration) as api:
        yield KubeClient(api, retry=retry)


class KubeClient:
    """TrainJobs, runtimes, secrets, pods, events and logs over one ``kubernetes_asyncio`` ApiClient."""

    def __init__(self, api_client: Any, *, retry: RetryPolicy | None = None):
        from kubernetes_asyncio import client

        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.extensions = client.ApiextensionsV1Api(api_client)
        self.retry = retry or RetryPolicy()

    async def _call(self, action: str, request: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await self.retry.call(
            action, lambda: request(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        )

    async def _open(
        self,
        action: str,
        request: Callable[..., Any],
        *args: Any,
        timeout: Any = REQUEST_TIMEOUT,
        read_body: bool = False,
        **kwargs: Any,
    ) -> Any:
        """A request whose body the caller reads (watch, logs, plain JSON lists); with
        ``read_body``, its whole body (bytes), read inside the attempt: a body cut midway (an
        API-server restart) is retried like a request that got no answer.

        Without preloading, the generated client does not check the status: done here,
        inside the retried attempt, so a 5xx is retried and a 4xx is a ``KubeApiError``.
        """
        from kubernetes_asyncio.client.rest import ApiException

        async def attempt() -> Any:
            response = await request(*args, _preload_content=False, _request_timeout=timeout, **kwargs)
            if 200 <= response.status <= 299:
                if not read_body:
                    return response
                try:
                    return await response.read()
                finally:
                    response.release()
            try:
                error = ApiException(status=response.status, reason=response.reason)
                error.body = (await response.read()).decode("utf-8", errors="replace")
                # a plain dict; the library infers the attribute's type from aiohttp's CIMultiDictProxy
                error.headers = dict(response.headers)  # type: ignore[assignment]
            finally:
                response.release()
            raise error

        return await self.retry.call(action, attempt)

    async def _get_or_none(self, action: str, request: Callable[..., Any], *args: Any) -> Any:
        try:
            return await self._call(action, request, *args)
        except KubeApiError as exc:
            if exc.object_not_found:
                return None
            raise

    async def _delete(self, action: str, request: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """Delete; False when it was already gone."""
        try:
            await self._call(action, request, *args, **kwargs)
            return True
        except KubeApiError as exc:
            if exc.object_not_found:
                return False
            raise

    # --- Training jobs (TrainJob, PyTorchJob) -------------------------------------------------

    async def create_job(self, resource: JobResource, body: dict[str, Any]) -> dict[str, Any]:
        """Create with strict field validation: an unknown field is a 400, never silently pruned
        (a field of the other TrainJob spec generation says which ``spec_generation`` to set)."""
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            return await self._call(
                f"Create {resource.kind.value} {ns}/{name}",
                self.custom.create_namespaced_custom_object,
                resource.group,
                resource.version,
                ns,
                resource.plural,
                body,
                field_validation="Strict",
            )
        except KubeApiError as exc:
            hinted = with_generation_hint(exc)
            if hinted is exc:
                raise
            raise hinted from exc

    async def get_job(self, resource: JobResource, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get_or_none(
            f"Get {resource.kind.value} {namespace}/{name}",
            self.custom.get_namespaced_custom_object,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            name,
        )

    async def delete_job(self, resource: JobResource, namespace: str, name: str) -> bool:
        return await self._delete(
            f"Delete {resource.kind.value} {namespace}/{name}",
            self.custom.delete_namespaced_custom_object,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            name,
            propagation_policy="Background",
        )

    async def watch_job(
        self,
        resource: JobResource,
        namespace: str,
        name: str,
        resource_version: str | None,
        timeout_seconds: int,
        idle_timeout: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events of one job as dicts (``type``, ``object``), read straight off the stream.

        Not ``kubernetes_asyncio.watch.Watch``: it builds a new ApiClient (a connection pool
        and session) per watch and never closes it, about half a megabyte per watched job in
        a triggerer. The server ends a healthy watch after ``timeout_seconds``; the read
        timeout (``idle_timeout``, default that plus ``WATCH_TIMEOUT_MARGIN``) ends one whose
        connection went silent. Opening the watch is retried by the policy; errors while
        reading are the caller's (it re-reads).
        """
        async for event in self._watch_stream(
            f"Watch {resource.kind.value} {namespace}/{name}",
            resource,
            namespace,
            resource_version,
            timeout_seconds,
            idle_timeout,
            field_selector=f"metadata.name={name}",
        ):
            yield event

    async def list_jobs_page(
        self,
        resource: JobResource,
        namespace: str,
        label_selector: str,
        *,
        limit: int,
        continue_token: str | None = None,
    ) -> dict[str, Any]:
        """One page of the jobs of a kind in a namespace that match ``label_selector``, as plain JSON
        (``items``, ``metadata.resourceVersion``, ``metadata.continue``): no model classes, and the
        caller keeps of each item only what it needs."""
        extra = {"_continue": continue_token} if continue_token else {}
        response = await self._open(
            f"List {resource.kind.value}s in {namespace}",
            self.custom.list_namespaced_custom_object,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            label_selector=label_selector,
            limit=limit,
            read_body=True,
            **extra,
        )
        return json.loads(response)

    async def watch_jobs(
        self,
        resource: JobResource,
        namespace: str,
        label_selector: str,
        resource_version: str,
        timeout_seconds: int,
        idle_timeout: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch every job of a kind in a namespace that matches ``label_selector`` (the shared
        watch of :mod:`.informer`), from ``resource_version``, with bookmarks."""
        async for event in self._watch_stream(
            f"Watch {resource.kind.value}s in {namespace}",
            resource,
            namespace,
            resource_version,
            timeout_seconds,
            idle_timeout,
            label_selector=label_selector,
        ):
            yield event

    async def _watch_stream(
        self,
        action: str,
        resource: JobResource,
        namespace: str,
        resource_version: str | None,
        timeout_seconds: int,
        idle_timeout: float | None,
        **selector: Any,
    ) -> AsyncIterator[dict[str, Any]]:
        response = await self._open(
            action,
            self.custom.list_namespaced_custom_object,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
            allow_watch_bookmarks=True,
            watch=True,
            timeout=(REQUEST_TIMEOUT[0], idle_timeout or timeout_seconds + WATCH_TIMEOUT_MARGIN),
            **selector,
        )
        try:
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)
        finally:
            response.release()

    async def read_crd(self, resource: JobResource) -> dict[str, Any] | None:
        """The served CRD of a kind of job, or None when it cannot be read (403 for namespaced users).

        Read as plain JSON: the CRD is megabytes of schema, not worth building models for.
        """
        try:
            response = await self._open(
                f"Read {resource.kind.value} CRD",
                self.extensions.read_custom_resource_definition,
                resource.crd_name,
            )
        except KubeApiError as exc:
            if exc.status in (401, 403, 404):
                return None
            raise
        try:
            return json.loads(await response.read())
        finally:
            response.release()

    # --- Runtimes ---------------------------------------------------------------------------

    async def get_runtime(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        plural = RUNTIME_PLURALS[kind]
        if kind == c.CLUSTER_TRAINING_RUNTIME_KIND:
            return await self._get_or_none(
                f"Get {kind} {name}", self.custom.get_cluster_custom_object, *_TRAINER, plural, name
            )
        return await self._get_or_none(
            f"Get {kind} {namespace}/{name}",
            self.custom.get_namespaced_custom_object,
            *_TRAINER,
            namespace,
            plural,
            name,
        )

    async def list_runtime_names(self, kind: str, namespace: str) -> list[str]:
        plural = RUNTIME_PLURALS[kind]
        if kind == c.CLUSTER_TRAINING_RUNTIME_KIND:
            listed = await self._call(
                f"List {kind}s", self.custom.list_cluster_custom_object, *_TRAINER, plural
            )
        else:
            listed = await self._call(
                f"List {kind}s in {namespace}",
                self.custom.list_namespaced_custom_object,
                *_TRAINER,
                namespace,
                plural,
            )
        return sorted(item["metadata"]["name"] for item in listed.get("items", []))

    # --- Secrets and ConfigMaps (the objects a TrainJob owns) ---------------------------------

    def _core_methods(
        self, kind: str
    ) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
        suffix = {"Secret": "secret", "ConfigMap": "config_map"}[kind]
        return tuple(
            getattr(self.core, f"{verb}_namespaced_{suffix}")
            for verb in ("create", "replace", "patch", "delete")
        )

    async def put_owned(self, body: dict[str, Any]) -> None:
        """Create the Secret or ConfigMap, or replace the one an earlier attempt left."""
        kind, ns, name = body["kind"], body["metadata"]["namespace"], body["metadata"]["name"]
        create, replace, _, _ = self._core_methods(kind)
        try:
            await self._call(f"Create {kind} {ns}/{name}", create, ns, body)
        except KubeApiError as exc:
            if exc.status != 409:
                raise
            await self._call(f"Replace {kind} {ns}/{name}", replace, name, ns, body)

    async def set_owner(self, kind: str, namespace: str, name: str, owner: dict[str, Any]) -> None:
        """Make the object garbage-collected with ``owner`` (its TrainJob)."""
        patch = self._core_methods(kind)[2]
        await self._call(
            f"Patch {kind} {namespace}/{name}",
            patch,
            name,
            namespace,
            {"metadata": {"ownerReferences": [owner]}},
        )

    async def delete_owned(self, kind: str, namespace: str, name: str) -> None:
        await self._delete(f"Delete {kind} {namespace}/{name}", self._core_methods(kind)[3], name, namespace)

    # --- Pods, events and logs ----------------------------------------------------------------

    async def _list_json(
        self, action: str, request: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> list[dict]:
        """A list call read as plain JSON: no model classes (faster, and lenient about fields)."""
        response = await self._open(action, request, *args, **kwargs)
        try:
            return json.loads(await response.read()).get("items") or []
        finally:
            response.release()

    async def list_job_pods(
        self, resource: JobResource, namespace: str, job_name: str
    ) -> list[dict[str, Any]]:
        """The pods of a job, as plain dicts, in name order (rank 0 first: ``-node-0-0``, ``-master-0``)."""
        items = await self._list_json(
            f"List pods of {resource.kind.value} {namespace}/{job_name}",
            self.core.list_namespaced_pod,
            namespace,
            label_selector=f"{resource.pod_label}={job_name}",
        )
        return sorted(items, key=lambda pod: pod["metadata"]["name"])

    async def list_events(self, namespace: str, involved_name: str) -> list[dict[str, Any]]:
        """Events about one object (a pod or the TrainJob), as plain dicts."""
        return await self._list_json(
            f"List events of {namespace}/{involved_name}",
            self.core.list_namespaced_event,
            namespace,
            field_selector=f"involvedObject.name={involved_name}",
        )

    async def _read_log(
        self,
        action: str,
        namespace: str,
        pod: str,
        container: str,
        *,
        since_time: str | None,
        timeout: Any = REQUEST_TIMEOUT,
        read_body: bool = False,
        **query: str | int,
    ) -> Any:
        """Open ``pods/{pod}/log`` of one container, its lines prefixed with their timestamps
        (with ``read_body``: read it whole, see :meth:`_open`).

        Through the API client's ``call_api``: the generated ``read_namespaced_pod_log`` has no
        ``sinceTime``, and a resumed read needs it (``sinceSeconds`` would lean on the clocks of
        this host and the node agreeing).
        """

        def request(*, _preload_content: bool, _request_timeout: Any) -> Any:
            params = {"container": container, "timestamps": "true", **query}
            if since_time is not None:
                params["sinceTime"] = since_time
            return self.api_client.call_api(
                "/api/v1/namespaces/{namespace}/pods/{name}/log",
                "GET",
                {"namespace": namespace, "name": pod},
                [(key, str(value)) for key, value in params.items()],
                {"Accept": "text/plain"},
                auth_settings=["BearerToken"],
                _preload_content=_preload_content,
                _request_timeout=_request_timeout,
            )

        return await self._open(action, request, timeout=timeout, read_body=read_body)

    async def read_log(
        self, namespace: str, pod: str, container: str, *, tail_lines: int, since_time: str | None = None
    ) -> list[str]:
        """The last ``tail_lines`` lines of a container's log (from ``since_time`` on), timestamped."""
        body = await self._read_log(
            f"Read log of pod {namespace}/{pod}",
            namespace,
            pod,
            container,
            since_time=since_time,
            read_body=True,
            tailLines=tail_lines,
        )
        # Raw bytes, decoded here: the generated client turns a text/plain body into repr(bytes).
        return body.decode("utf-8", errors="replace").splitlines()

    async def stream_log(
        self, namespace: str, pod: str, container: str, *, since_time: str | None = None
    ) -> AsyncIterator[str]:
        """Follow a container's log line by line, timestamped, until the server ends the stream.

        That is when the container ends, but also when the API server restarts or a proxy cuts
        an idle connection: the caller tells these apart (:mod:`.logs`). A 400 while the
        container has not started.
        """
        response = await self._read_log(
            f"Follow log of pod {namespace}/{pod}",
            namespace,
            pod,
            container,
            since_time=since_time,
            follow="true",
            timeout=(REQUEST_TIMEOUT[0], None),
        )
        try:
            pending = b""  # lines split by hand: aiohttp's line reader refuses lines over 128 KiB
            async for chunk in response.content.iter_any():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", errors="replace")
            if pending:
                yield pending.decode("utf-8", errors="replace")
        finally:
            response.release()

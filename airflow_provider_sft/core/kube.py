"""Thin Kubernetes clients for TrainJobs, pods, pod logs and secrets: one method per API call.

Sync (``kubernetes``) for the operator and the non-deferrable wait, async
(``kubernetes_asyncio``) for the trigger. Both apply one retry policy
(429/5xx/connection errors, exponential backoff, ``Retry-After`` honoured, sleeping
through the injected clock) and a default request timeout: a half-open TCP
connection must not hang a worker or the triggerer forever. Other errors become
:class:`KubeApiError` carrying the server's status, reason and message, never the
request body (it may hold a Secret).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.clock import SYSTEM_CLOCK, Clock
from airflow_provider_sft.core.errors import SFTError

T = TypeVar("T")
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
DEFAULT_REQUEST_TIMEOUT = (10, 60)  # (connect, read) seconds


class KubeApiError(SFTError):
    """A Kubernetes API call failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, action: str, status: int, reason: str, message: str):
        self.action, self.status, self.reason, self.server_message = action, status, reason, message
        hint = ""
        if status == 403:
            hint = " Grant the Airflow service account get/list/watch/create/delete on trainjobs, pods, pods/log and secrets."
        super().__init__(f"{action}: {status} {reason}: {message}.{hint}".replace("..", "."))


def _server_message(exc: Any) -> tuple[int, str, str]:
    status = int(getattr(exc, "status", 0) or 0)
    reason = str(getattr(exc, "reason", "") or type(exc).__name__)
    body = getattr(exc, "body", None)
    message = ""
    if body:
        try:
            message = json.loads(body).get("message", "")
        except (ValueError, AttributeError):
            message = ""
    return status, reason, message or str(reason)


def _retry_after_seconds(exc: Any) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    try:
        return float(headers.get("Retry-After"))
    except (TypeError, ValueError):
        return None


def _is_transient(exc: BaseException) -> bool:
    status = getattr(exc, "status", None)
    if status is not None and not isinstance(exc, KubeApiError):
        return int(status) in TRANSIENT_STATUS
    return isinstance(exc, ConnectionError | TimeoutError | OSError) or type(exc).__module__.startswith(
        ("urllib3", "aiohttp")
    )


class RetryPolicy:
    """Backoff for transient failures; sleeps through ``clock`` so tests need no real time."""

    def __init__(
        self,
        *,
        attempts: int = 5,
        base_seconds: float = 0.5,
        max_seconds: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
        log: Callable[[str], None] | None = None,
    ):
        self.attempts, self.base_seconds, self.max_seconds, self.clock, self.log = (
            attempts,
            base_seconds,
            max_seconds,
            clock,
            log,
        )

    def delay(self, attempt: int, exc: BaseException) -> float:
        return min(self.max_seconds, _retry_after_seconds(exc) or self.base_seconds * 2 ** (attempt - 1))

    def call(self, action: str, fn: Callable[[], T]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as exc:
                if isinstance(exc, KubeApiError):
                    raise
                if not _is_transient(exc) or attempt == self.attempts:
                    status, reason, message = _server_message(exc)
                    raise KubeApiError(action, status, reason, message) from exc
                delay = self.delay(attempt, exc)
                if self.log:
                    self.log(
                        f"{action}: transient error ({_server_message(exc)[1]}), retry {attempt} in {delay:.1f}s"
                    )
                self.clock.sleep(delay)
        raise AssertionError("unreachable")

    async def acall(self, action: str, fn: Callable[[], Any]) -> Any:
        for attempt in range(1, self.attempts + 1):
            try:
                return await fn()
            except Exception as exc:
                if isinstance(exc, KubeApiError):
                    raise
                if not _is_transient(exc) or attempt == self.attempts:
                    status, reason, message = _server_message(exc)
                    raise KubeApiError(action, status, reason, message) from exc
                await self.clock.asleep(self.delay(attempt, exc))
        raise AssertionError("unreachable")


_CRD = (c.TRAINER_GROUP, c.TRAINER_VERSION)

SERVER_URL_ENV = "KUBERNETES_SERVER_URL"
AUTH_TOKEN_ENV = "KUBERNETES_AUTH_TOKEN"
CA_CERT_ENV = "KUBERNETES_CA_CERT"
IN_CLUSTER_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def environment_server() -> tuple[str, str, str] | None:
    """(url, token, CA path) from ``KUBERNETES_SERVER_URL``/``KUBERNETES_AUTH_TOKEN`` (the seed's
    variables), or None when they are not set. The token is never sent to an unverified server."""
    import os
    from pathlib import Path

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


def api_client_from_environment() -> Any:
    """A sync ApiClient from the seed's environment variables, else the in-cluster service account."""
    from kubernetes import client, config

    server = environment_server()
    if server is None:
        config.load_incluster_config()
        return client.ApiClient()
    url, token, ca = server
    configuration = client.Configuration()
    configuration.host, configuration.ssl_ca_cert = url, ca
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(configuration)


class TrainJobClient:
    """Sync client over a ``kubernetes.client.ApiClient``."""

    def __init__(
        self,
        api_client: Any,
        *,
        retry: RetryPolicy | None = None,
        request_timeout: Any = DEFAULT_REQUEST_TIMEOUT,
    ):
        from kubernetes import client

        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.extensions = client.ApiextensionsV1Api(api_client)
        self.retry = retry or RetryPolicy()
        self.timeout = request_timeout

    # --- TrainJobs -----------------------------------------------------------------------

    def create_trainjob(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create with strict field validation: an unknown field is a 400, never silently pruned."""
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        return self.retry.call(
            f"Create TrainJob {ns}/{name}",
            lambda: self.custom.create_namespaced_custom_object(
                *_CRD, ns, c.TRAINJOB_PLURAL, body, field_validation="Strict", _request_timeout=self.timeout
            ),
        )

    def get_trainjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.retry.call(
                f"Get TrainJob {namespace}/{name}",
                lambda: self.custom.get_namespaced_custom_object(
                    *_CRD, namespace, c.TRAINJOB_PLURAL, name, _request_timeout=self.timeout
                ),
            )
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def delete_trainjob(self, namespace: str, name: str) -> bool:
        """Delete (background propagation); False when it was already gone."""
        try:
            self.retry.call(
                f"Delete TrainJob {namespace}/{name}",
                lambda: self.custom.delete_namespaced_custom_object(
                    *_CRD,
                    namespace,
                    c.TRAINJOB_PLURAL,
                    name,
                    propagation_policy="Background",
                    _request_timeout=self.timeout,
                ),
            )
            return True
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise

    def list_trainjobs(self, namespace: str, label_selector: str = "") -> dict[str, Any]:
        return self.retry.call(
            f"List TrainJobs in {namespace}",
            lambda: self.custom.list_namespaced_custom_object(
                *_CRD,
                namespace,
                c.TRAINJOB_PLURAL,
                label_selector=label_selector,
                _request_timeout=self.timeout,
            ),
        )

    def watch_trainjob(
        self, namespace: str, name: str, resource_version: str | None, timeout_seconds: int
    ) -> Iterator[dict[str, Any]]:
        """Watch events of one TrainJob (raises the ApiException of a 410 Gone to the caller)."""
        from kubernetes import watch

        stream = watch.Watch().stream(
            self.custom.list_namespaced_custom_object,
            *_CRD,
            namespace,
            c.TRAINJOB_PLURAL,
            field_selector=f"metadata.name={name}",
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
            allow_watch_bookmarks=True,
        )
        yield from stream

    def read_trainjob_crd(self) -> dict[str, Any] | None:
        """The served TrainJob CRD, or None when it cannot be read (403 for namespaced users)."""
        try:
            crd = self.retry.call(
                "Read TrainJob CRD",
                lambda: self.extensions.read_custom_resource_definition(
                    c.TRAINJOB_CRD_NAME, _request_timeout=self.timeout
                ),
            )
        except KubeApiError as exc:
            if exc.status in (401, 403, 404):
                return None
            raise
        return self.api_client.sanitize_for_serialization(crd)

    # --- Secrets ---------------------------------------------------------------------------

    def create_secret(self, body: dict[str, Any]) -> dict[str, Any]:
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        result = self.retry.call(
            f"Create Secret {ns}/{name}",
            lambda: self.core.create_namespaced_secret(ns, body, _request_timeout=self.timeout),
        )
        return {"metadata": {"name": result.metadata.name, "uid": result.metadata.uid}}

    def replace_secret(self, body: dict[str, Any]) -> None:
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        self.retry.call(
            f"Replace Secret {ns}/{name}",
            lambda: self.core.replace_namespaced_secret(name, ns, body, _request_timeout=self.timeout),
        )

    def set_secret_owner(self, namespace: str, name: str, owner: dict[str, Any]) -> None:
        self.retry.call(
            f"Patch Secret {namespace}/{name}",
            lambda: self.core.patch_namespaced_secret(
                name, namespace, {"metadata": {"ownerReferences": [owner]}}, _request_timeout=self.timeout
            ),
        )

    def delete_secret(self, namespace: str, name: str) -> None:
        try:
            self.retry.call(
                f"Delete Secret {namespace}/{name}",
                lambda: self.core.delete_namespaced_secret(name, namespace, _request_timeout=self.timeout),
            )
        except KubeApiError as exc:
            if exc.status != 404:
                raise

    # --- Pods and logs ---------------------------------------------------------------------

    def node0_pod(self, namespace: str, job_name: str) -> str | None:
        """Name of the rank-0 trainer pod of a TrainJob (its JobSet's ``node`` job, index 0)."""
        pods = self.retry.call(
            f"List pods of TrainJob {namespace}/{job_name}",
            lambda: self.core.list_namespaced_pod(
                namespace, label_selector=f"{c.LABEL_JOBSET_NAME}={job_name}", _request_timeout=self.timeout
            ),
        )
        names = sorted(
            pod.metadata.name for pod in pods.items if pod.metadata.name.startswith(f"{job_name}-{c.NODE}-0-")
        )
        return names[0] if names else None

    def read_log_tail(self, namespace: str, pod: str, tail_lines: int = 200) -> str:
        # Raw bytes, decoded here: the generated client turns a text/plain body into repr(bytes).
        response = self.retry.call(
            f"Read log of pod {namespace}/{pod}",
            lambda: self.core.read_namespaced_pod_log(
                pod,
                namespace,
                container=c.NODE,
                tail_lines=tail_lines,
                _preload_content=False,
                _request_timeout=self.timeout,
            ),
        )
        return response.data.decode("utf-8", errors="replace")

    def stream_log(self, namespace: str, pod: str) -> Iterator[str]:
        """Follow a pod's log line by line until the container ends."""
        response = self.core.read_namespaced_pod_log(
            pod, namespace, container=c.NODE, follow=True, _preload_content=False, _request_timeout=(10, None)
        )
        pending = b""
        try:
            for chunk in response.stream(decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", errors="replace")
            if pending:
                yield pending.decode("utf-8", errors="replace")
        finally:
            response.release_conn()


class AsyncTrainJobClient:
    """Async client over a ``kubernetes_asyncio.client.ApiClient`` (the trigger's side)."""

    def __init__(self, api_client: Any, *, retry: RetryPolicy | None = None, request_timeout: Any = 60):
        from kubernetes_asyncio import client

        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.retry = retry or RetryPolicy()
        self.timeout = request_timeout

    async def get_trainjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.retry.acall(
                f"Get TrainJob {namespace}/{name}",
                lambda: self.custom.get_namespaced_custom_object(
                    *_CRD, namespace, c.TRAINJOB_PLURAL, name, _request_timeout=self.timeout
                ),
            )
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def delete_trainjob(self, namespace: str, name: str) -> bool:
        try:
            await self.retry.acall(
                f"Delete TrainJob {namespace}/{name}",
                lambda: self.custom.delete_namespaced_custom_object(
                    *_CRD,
                    namespace,
                    c.TRAINJOB_PLURAL,
                    name,
                    propagation_policy="Background",
                    _request_timeout=self.timeout,
                ),
            )
            return True
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise

    async def watch_trainjob(
        self, namespace: str, name: str, resource_version: str | None, timeout_seconds: int
    ):
        """Watch events of one TrainJob as dicts (``type``, ``object``), read straight off the stream.

        Not ``kubernetes_asyncio.watch.Watch``: it builds a new ApiClient (a connection
        pool and session) per watch and never closes it, which costs about half a
        megabyte per watched job in a triggerer. The explicit request timeout outlives
        the server-side one, so the server ends the watch, not a client-side 60 s default.
        """
        response = await self.custom.list_namespaced_custom_object(
            *_CRD,
            namespace,
            c.TRAINJOB_PLURAL,
            field_selector=f"metadata.name={name}",
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
            allow_watch_bookmarks=True,
            watch=True,
            _preload_content=False,
            _request_timeout=timeout_seconds + 30,
        )
        try:
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)
        finally:
            response.release()

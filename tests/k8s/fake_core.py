"""FAKE: the parts of a cluster that cannot run here, in front of the real CRD server.

One loopback HTTP endpoint that a client uses as its only API server:

* ``/apis/...`` (TrainJobs, CRDs, watches) is proxied, streaming, to the REAL crdserver;
* ``/api/v1/.../secrets`` and ``configmaps`` are a small in-memory store (crdserver has no core API);
* ``/api/v1/.../pods``, ``pods/{name}/log`` and ``events`` serve the pods of TrainJobs
  that the status driver "started", and the events a test adds. As a kubelet does, a pod
  whose container waits answers its log with a 400 ("is waiting to start").

When the real server is down the proxy drops the client's connection, as a restarting
API server does; when it is frozen the proxy hangs with it.

The status driver stands in for the Trainer controller's status updates: tests call
:meth:`FakeCluster.drive` to set a TrainJob's status the way the controller would
(through the real ``/status`` subresource). :meth:`FakeCluster.run_pods` runs a
TrainJob's pods with the stand-in controller and kubelet of :mod:`tests.k8s.standin`
(merged with the real runtime object, sandboxed), then marks the job Complete or
Failed by the nodes' exit codes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, TCPConnector, web

from tests.k8s.harness import ApiServer, free_port
from tests.k8s.standin import Kubelet, PodFailed, job_pods

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
#: The API of each kind of job the stand-in controller drives: (group, version, plural).
KINDS = {"TrainJob": (GROUP, VERSION, PLURAL), "PyTorchJob": ("kubeflow.org", "v1", "pytorchjobs")}
#: A PyTorchJob's conditions for each phase (the Training Operator keeps one per type).
_PYTORCHJOB_CONDITIONS = {
    "pending": ("Created",),
    "running": ("Created", "Running"),
    "complete": ("Created", "Succeeded"),
    "failed": ("Created", "Failed"),
    "suspended": ("Created", "Suspended"),
}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeCluster:
    def __init__(self, server: ApiServer):
        self.server = server
        self.port = free_port()
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        self.kubelet = Kubelet(self)
        # (ns, pod) -> {"job": name, "log": str, "phase": "Running"|"Pending"|..., "waiting": reason or None}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.forbidden = ""  # a path suffix answered with 403 (a missing RBAC rule), "" for none
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for request counting
        self.queries: list[tuple[str, str, str]] = []  # (method, path, query string), for RBAC checks
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="fake-core")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> FakeCluster:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)

        self._thread.join(10)

    async def _shutdown(self) -> None:
        await self._runner.cleanup()
        await self._session.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._setup())
        self._ready.set()
        self._loop.run_forever()

    async def _setup(self) -> None:
        app = web.Application(client_max_size=64 * 2**20, middlewares=[self._record])
        for plural in ("secrets", "configmaps"):
            app.router.add_route("*", f"/api/v1/namespaces/{{ns}}/{plural}", self._objects)
            app.router.add_route("*", f"/api/v1/namespaces/{{ns}}/{plural}/{{name}}", self._object)
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self._pods)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}/log", self._log)
        app.router.add_get("/api/v1/namespaces/{ns}/events", self._events)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        context = ssl.create_default_context(cafile=self.server.ca_cert)
        self._session = ClientSession(connector=TCPConnector(ssl=context, limit=0), auto_decompress=False)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, shutdown_timeout=0.5).start()

    def api_client(self):
        """A sync client for the tests' own reads and writes (the provider itself is async)."""
        from kubernetes import client

        config = client.Configuration()
        config.host = self.url
        return client.ApiClient(config)

    def secrets_in(self, namespace: str) -> list[str]:
        return [name for (ns, name) in self.secrets if ns == namespace]

    def configmaps_in(self, namespace: str) -> list[str]:
        return [name for (ns, name) in self.configmaps if ns == namespace]

    def _store(self, request: web.Request) -> dict[tuple[str, str], dict[str, Any]]:
        return self.configmaps if "/configmaps" in request.path else self.secrets

    def connect(self, **kwargs):
        """The provider's client on this cluster: ``async with cluster.connect() as kube``."""
        from kubernetes_asyncio import client

        from airflow_provider_sft.core.backends.kubernetes.client import connect

        config = client.Configuration()
        config.host = self.url
        return connect(config, **kwargs)

    # --- proxy to the real crdserver --------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler):
        self.requests.append((request.method, request.path))
        self.queries.append((request.method, request.path, request.query_string))
        if self.forbidden and request.path.endswith(self.forbidden):
            # FAKE RBAC: what the real API server answers a service account without the verb.
            return _status(
                403,
                "Forbidden",
                f'{self.forbidden} is forbidden: User "system:serviceaccount:airflow:worker" cannot '
                f"{'watch' if 'watch=true' in request.query_string.lower() else request.method.lower()} resource",
            )
        return await handler(request)

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        body = await request.read()
        try:
            upstream = await self._session.request(
                request.method,
                f"{self.server.url}{request.rel_url}",
                headers=headers,
                data=body or None,
                timeout=None,
            )
        except OSError:  # the API server is down: the client sees its connection dropped
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError from None
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                response.headers[key] = value
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            upstream.release()
        return response

    # --- fake Secrets and ConfigMaps ---------------------------------------------------------

    async def _objects(self, request: web.Request) -> web.Response:
        ns, store = request.match_info["ns"], self._store(request)
        plural = "configmaps" if store is self.configmaps else "secrets"
        if request.method != "POST":
            items = [s for (n, _), s in store.items() if n == ns]
            return web.json_response({"kind": "List", "apiVersion": "v1", "items": items})
        body = await request.json()
        name = body["metadata"]["name"]
        if (ns, name) in store:
            return _status(409, "AlreadyExists", f'{plural} "{name}" already exists')
        body["metadata"].update(namespace=ns, uid=f"uid-{name}", resourceVersion="1")
        store[(ns, name)] = body
        return web.json_response(body, status=201)

    async def _object(self, request: web.Request) -> web.Response:
        key, store = (request.match_info["ns"], request.match_info["name"]), self._store(request)
        plural = "configmaps" if store is self.configmaps else "secrets"
        if key not in store and request.method != "PUT":
            return _status(404, "NotFound", f'{plural} "{key[1]}" not found', name=key[1], kind=plural)
        if request.method == "DELETE":
            store.pop(key)
            return web.json_response({"kind": "Status", "status": "Success"})
        if request.method == "PATCH":
            patch = await request.json()
            store[key]["metadata"].update(patch.get("metadata", {}))
        elif request.method == "PUT":
            store[key] = await request.json()
        return web.json_response(store[key])

    # --- fake pods and logs -------------------------------------------------------------------

    async def _pods(self, request: web.Request) -> web.Response:
        ns, selector = request.match_info["ns"], request.query.get("labelSelector", "")
        wanted = selector.partition("=")[2]
        items = [
            {
                "metadata": {
                    "name": pod,
                    "namespace": n,
                    "labels": {"jobset.sigs.k8s.io/jobset-name": info["job"]},
                },
                "status": _pod_status(info),
            }
            for (n, pod), info in self.pods.items()
            if n == ns and (not wanted or info["job"] == wanted)
        ]
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})

    async def _log(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.pods:
            return _status(404, "NotFound", f'pods "{key[1]}" not found', name=key[1], kind="pods")
        pod = self.pods[key]
        if pod.get("waiting"):
            return _status(
                400,
                "BadRequest",
                f'container "node" in pod "{key[1]}" is waiting to start: {pod["waiting"]}',
            )
        log = pod["log"]
        if (
            isinstance(log, Path) and request.query.get("follow", "").lower() == "true"
        ):  # stream until the pod ends
            response = web.StreamResponse()
            await response.prepare(request)
            with log.open("rb") as handle:
                while True:
                    ended = pod["phase"] in ("Succeeded", "Failed")
                    chunk = handle.read()
                    if chunk:
                        await response.write(chunk)
                    elif ended:
                        break
                    else:
                        await asyncio.sleep(0.2)
            await response.write_eof()
            return response
        lines = (log.read_text(errors="replace") if isinstance(log, Path) else log).splitlines()
        tail = int(request.query.get("tailLines", 0) or 0)
        return web.Response(text="\n".join(lines[-tail:] if tail else lines) + "\n")

    async def _events(self, request: web.Request) -> web.Response:
        ns, selector = request.match_info["ns"], request.query.get("fieldSelector", "")
        wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
        items = [
            event
            for event in self.events
            if event["metadata"]["namespace"] == ns
            and all(
                (event["involvedObject"].get(key.removeprefix("involvedObject.")) == value)
                for key, value in wanted.items()
            )
        ]
        return web.json_response({"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": items})

    def add_pod(
        self, namespace: str, job: str, *, index: int = 0, phase: str = "Pending", waiting=None, log=""
    ):
        """A pod of ``job`` as JobSet names them (``<job>-node-0-<index>-xxxxx``)."""
        name = f"{job}-node-0-{index}-abcde"
        self.pods[(namespace, name)] = {"job": job, "log": log, "phase": phase, "waiting": waiting}
        return name

    def add_event(
        self, namespace: str, kind: str, name: str, reason: str, message: str, *, type: str = "Warning"
    ):
        """An event as the scheduler or kubelet records it (core/v1 Event)."""
        self.events.append(
            {
                "metadata": {"name": f"{name}.{len(self.events):x}", "namespace": namespace},
                "involvedObject": {"kind": kind, "name": name, "namespace": namespace},
                "reason": reason,
                "message": message,
                "type": type,
                "lastTimestamp": _now(),
                "count": 1,
            }
        )

    # --- status driver (stands in for the Trainer controller + kubelet) ----------------------

    def custom(self):
        from kubernetes import client

        return client.CustomObjectsApi(self.server.api_client())

    def drive(
        self,
        namespace: str,
        name: str,
        phase: str,
        *,
        reason: str = "",
        message: str = "",
        log: str = "",
        kind: str = "TrainJob",
    ) -> None:
        """Set the job's status like its controller does for ``phase``: running/complete/failed/suspended."""
        if kind == "PyTorchJob":
            self._drive_pytorchjob(namespace, name, phase, reason=reason, message=message, log=log)
            return
        conditions, active, ready = [], 0, 0
        if phase == "running":
            active = ready = 1
        elif phase == "pending":  # pods created (JobSet counts Pending pods as active), none ready
            active = 1
        elif phase in ("complete", "failed", "suspended"):
            kind = {"complete": "Complete", "failed": "Failed", "suspended": "Suspended"}[phase]
            conditions.append(
                {
                    "type": kind,
                    "status": "True",
                    "reason": reason or kind,
                    "message": message,
                    "lastTransitionTime": _now(),
                }
            )
        status = {
            "conditions": conditions,
            "jobsStatus": [
                {
                    "name": "node",
                    "ready": ready,
                    "succeeded": int(phase == "complete"),
                    "failed": int(phase == "failed"),
                    "active": active,
                    "suspended": int(phase == "suspended"),
                }
            ],
        }
        self.custom().patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}
        )
        pod = (namespace, f"{name}-node-0-0-abcde")
        has_pods = any(info["job"] == name for (n, _), info in self.pods.items() if n == namespace)
        if log or (phase == "running" and not has_pods):
            self.pods[pod] = {"job": name, "log": log, "phase": "Running"}

    def _drive_pytorchjob(
        self, namespace: str, name: str, phase: str, *, reason: str, message: str, log: str
    ) -> None:
        """The Training Operator's status for ``phase``: ``Created``, then the phase's condition."""
        types = _PYTORCHJOB_CONDITIONS[phase]
        conditions = [
            {
                "type": kind,
                "status": "True",
                "reason": reason if kind == types[-1] and reason else f"PyTorchJob{kind}",
                "message": message if kind == types[-1] else "",
                "lastTransitionTime": _now(),
                "lastUpdateTime": _now(),
            }
            for kind in types
        ]
        group, version, plural = KINDS["PyTorchJob"]
        self.custom().patch_namespaced_custom_object_status(
            group, version, namespace, plural, name, {"status": {"conditions": conditions}}
        )
        has_pods = any(info["job"] == name for (n, _), info in self.pods.items() if n == namespace)
        if log or (phase == "running" and not has_pods):
            self.pods[(namespace, f"{name}-master-0")] = {"job": name, "log": log, "phase": "Running"}

    def auto_run(
        self, namespace: str, *, extra_env: dict[str, str] | None = None, kind: str = "TrainJob"
    ) -> threading.Thread:
        """Run the pods of every job of ``kind`` created in ``namespace`` (a background kubelet stand-in)."""
        group, version, plural = KINDS[kind]
        from kubernetes import watch

        def loop() -> None:
            started: set[str] = set()
            while True:  # re-watch on errors, e.g. the watch cache of a just-installed CRD lagging behind
                try:
                    stream = watch.Watch().stream(
                        self.custom().list_namespaced_custom_object,
                        group,
                        version,
                        namespace,
                        plural,
                        timeout_seconds=900,
                    )
                    for event in stream:
                        name = event["object"]["metadata"]["name"]
                        if event["type"] == "ADDED" and name not in started:
                            started.add(name)
                            threading.Thread(
                                target=self.run_pods,
                                args=(namespace, name),
                                kwargs={"extra_env": extra_env, "kind": kind},
                                daemon=True,
                            ).start()
                    return
                except Exception:
                    time.sleep(0.2)

        thread = threading.Thread(target=loop, daemon=True, name=f"fake-kubelet-{namespace}")
        thread.start()
        return thread

    def run_pods(
        self, namespace: str, name: str, *, extra_env: dict[str, str] | None = None, kind: str = "TrainJob"
    ) -> list[int]:
        """Run the job's pods with the stand-in controller and kubelet; mark it done."""
        group, version, plural = KINDS[kind]
        job = self.custom().get_namespaced_custom_object(group, version, namespace, plural, name)
        runtime = None
        if kind == "TrainJob":
            ref = job["spec"]["runtimeRef"]
            if ref.get("kind", "ClusterTrainingRuntime") == "ClusterTrainingRuntime":
                runtime = self.custom().get_cluster_custom_object(
                    GROUP, VERSION, "clustertrainingruntimes", ref["name"]
                )
            else:
                runtime = self.custom().get_namespaced_custom_object(
                    GROUP, VERSION, namespace, "trainingruntimes", ref["name"]
                )
        pods, container, hosts = job_pods(job, runtime)
        self.kubelet.extra_env = dict(extra_env or {})

        def drive(phase: str, **kwargs: str) -> None:
            self.drive(namespace, name, phase, kind=kind, **kwargs)

        try:
            codes = self.kubelet.run(
                namespace, name, pods, container=container, hosts=hosts, on_started=lambda: drive("running")
            )
        except PodFailed as exc:
            drive("failed", reason="JobsFailed", message=str(exc))
            return [1]
        if all(code == 0 for code in codes):
            drive("complete", reason="JobsCompleted", message="jobs completed")
        else:
            failed = next(rank for rank, code in enumerate(codes) if code)
            drive(
                "failed",
                reason="JobsFailed",
                message=f"container {container} of node {failed} exited with code {codes[failed]}",
            )
        return codes


def _pod_status(info: dict[str, Any]) -> dict[str, Any]:
    waiting = info.get("waiting")
    state = {"waiting": {"reason": waiting}} if waiting else {"running": {"startedAt": _now()}}
    return {"phase": info.get("phase", "Running"), "containerStatuses": [{"name": "node", "state": state}]}


def _status(code: int, reason: str, message: str, **details: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return web.json_response(body, status=code)

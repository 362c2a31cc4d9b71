"""FAKE: the parts of a cluster that cannot run here, in front of the real CRD server.

One loopback HTTP endpoint that a client uses as its only API server:

* ``/apis/...`` (TrainJobs, CRDs, watches) is proxied, streaming, to the REAL crdserver;
* ``/api/v1/.../secrets`` and ``configmaps`` are a small in-memory store (crdserver has no core API);
* ``/api/v1/.../pods``, ``pods/{name}/log`` and ``events`` serve the pods of TrainJobs
  that the status driver "started", and the events a test adds. As a kubelet does, a pod
  whose container waits answers its log with a 400 ("is waiting to start"), and every log
  line carries the time it was first read (``timestamps``, ``sinceTime``, ``sinceSeconds``,
  ``tailLines``, ``follow`` as the kubelet applies them).

What kube-apiserver refuses, this refuses with the same status and message (the rules, with
their upstream sources, are in :mod:`tests.k8s.core_rules`; tests/k8s/test_fake_core_conformance.py
checks each): a bad object name or label, a Secret or ConfigMap over 1 MiB, a
``kubernetes.io/dockerconfigjson`` Secret without valid JSON, a log request for a container the
pod does not have, bad log options. :meth:`FakeCluster.cut_log_streams` makes it cut a log
stream as a restarting API server or a proxy's idle timeout does.

When the real server is down the proxy drops the client's connection, as a restarting
API server does; when it is frozen the proxy hangs with it.

The status driver stands in for the Trainer controller's status updates: tests call
:meth:`FakeCluster.drive` to set a TrainJob's status the way the controller would
(through the real ``/status`` subresource). :meth:`FakeCluster.run_pods` runs a
TrainJob's pods with the stand-in controller and kubelet of :mod:`tests.k8s.standin`
(merged with the real runtime object, sandboxed), then marks the job Complete or
Failed by the nodes' exit codes. With :attr:`FakeCluster.trainer_status` set (the Trainer's
``TrainJobStatus`` feature gate on), a TrainJob's trainer container gets what the controller's
TrainJobStatus plugin injects, and its pods reach the stand-in status server
(:mod:`tests.k8s.status_server`).
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

from tests.k8s import core_rules
from tests.k8s.harness import ApiServer, free_port
from tests.k8s.standin import NODE, PYTORCH, Kubelet, PodFailed, job_pods
from tests.k8s.status_server import StatusServer, TokenIssuer, inject, tls_config_map

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
#: The API of each kind of job the stand-in controller drives: (group, version, plural).
KINDS = {"TrainJob": (GROUP, VERSION, PLURAL), "PyTorchJob": ("kubeflow.org", "v1", "pytorchjobs")}
SUSPEND_POLL_SECONDS = 0.2  # how often the stand-in controllers read a running job's suspend flag
#: A PyTorchJob's conditions for each phase (the Training Operator keeps one per type).
_PYTORCHJOB_CONDITIONS = {
    "pending": ("Created",),
    "running": ("Created", "Running"),
    "complete": ("Created", "Succeeded"),
    "failed": ("Created", "Failed"),
    "suspended": ("Created", "Suspended"),
}


def _rfc3339_nano(stamp_ns: int) -> str:
    """The kubelet's log timestamp: RFC 3339 with nine fraction digits (RFC3339NanoFixed)."""
    moment = dt.datetime.fromtimestamp(stamp_ns // 10**9, dt.timezone.utc)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{stamp_ns % 10**9:09d}Z"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeCluster:
    def __init__(self, server: ApiServer):
        self.server = server
        self.port = free_port()
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.configmaps: dict[tuple[str, str], dict[str, Any]] = {}
        self.kubelet = Kubelet(self)
        self.trainer_status: StatusServer | None = None  # the TrainJobStatus gate: on with a server
        self._tokens: TokenIssuer | None = None
        # (ns, pod) -> {"job": name, "log": str or Path, "phase": "Running"|"Pending"|..., "waiting": reason
        # or None, "containers": [names] (or "pod": its spec)}; "stamped" is the log read so far, timestamped
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.cut_after: tuple[int, str] | None = None  # (lines, how): see cut_log_streams
        self.events: list[dict[str, Any]] = []
        self.forbidden = ""  # a path suffix answered with 403 (a missing RBAC rule), "" for none
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for request counting
        self.queries: list[tuple[str, str, str]] = []  # (method, path, query string), for RBAC checks
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.stopped = threading.Event()  # set by stop(): the background kubelets end with it
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
        self.stopped.set()
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

    def token_issuer(self) -> TokenIssuer:
        """The cluster's service-account token issuer (made on first use: an RSA key takes a moment)."""
        if self._tokens is None:
            self._tokens = TokenIssuer()
        return self._tokens

    def services(self) -> list[dict[str, Any]]:
        """The Services a pod reaches from its sandbox: the Trainer's status server, when the gate is on."""
        return [self.trainer_status.service()] if self.trainer_status is not None else []

    def _enforce_trainer_status(
        self, namespace: str, job: dict[str, Any], pods: list[dict[str, Any]]
    ) -> None:
        """The TrainJobStatus plugin (trainjobstatus.go): the CA's ConfigMap (Build), then the
        variables, the projected volume and its mount in the trainer container (EnforceMLPolicy)."""
        server = self.trainer_status
        if server is None:
            return
        name = job["metadata"]["name"]
        config_map = tls_config_map(job, server.certificates.ca_cert.read_bytes())
        self.configmaps[(namespace, config_map["metadata"]["name"])] = config_map
        for pod in pods:
            inject(pod, NODE, namespace, name, server.url(namespace, name))

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
        if refused := _refused(body, plural):
            return refused
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
            body = await request.json()
            if refused := _refused(body, plural):
                return refused
            store[key] = body
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
                "status": _pod_status(pod, info),
            }
            for (n, pod), info in self.pods.items()
            if n == ns and (not wanted or info["job"] == wanted)
        ]
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})

    def cut_log_streams(self, after_lines: int, how: str = "reset") -> None:
        """Cut each pod's first log read after ``after_lines`` lines, the container running on.

        ``how="reset"``: the connection drops mid-body, as when the API server restarts: a
        followed stream, or a plain read (a tail) of more lines than that;
        ``how="end"``: a followed stream ends cleanly, as a proxy's idle timeout or the server's
        own request timeout ends it, which a client cannot tell from the container's end.
        """
        self.cut_after = (after_lines, how)

    def _stamped(self, info: dict[str, Any]) -> list[tuple[int, str]]:
        """The pod's log read so far, each line with the time it was first read (the runtime's
        timestamp). A line still being written (no newline yet) waits until its container ends."""
        stamped, now = info.setdefault("stamped", []), time.time_ns()
        log = info["log"]
        if isinstance(log, Path):
            with log.open("rb") as handle:
                handle.seek(info.get("offset", 0))
                data = handle.read()
            ended = info.get("phase") in ("Succeeded", "Failed")
            complete = data if ended else data[: data.rfind(b"\n") + 1]
            info["offset"] = info.get("offset", 0) + len(complete)
            lines = complete.decode("utf-8", errors="replace").splitlines()
        else:
            lines = log.splitlines()[len(stamped) :]
        stamped.extend((now, line) for line in lines)
        return stamped

    def _log_refusal(self, request: web.Request) -> web.Response | tuple[dict[str, Any], str]:
        """kube-apiserver's answer to a log request it refuses, in its order (LogREST.Get:
        the options, the pod, its container; then the kubelet: a container that waits), else
        (the pod's record, the container)."""
        ns, name = request.match_info["ns"], request.match_info["name"]
        if invalid := core_rules.pod_log_options(name, dict(request.query)):
            return web.json_response(invalid, status=422)
        if (ns, name) not in self.pods:
            return _status(404, "NotFound", f'pods "{name}" not found', name=name, kind="pods")
        info = self.pods[(ns, name)]
        containers, container = _containers(name, info), request.query.get("container", "")
        if not container and len(containers) != 1:
            choices = " ".join(containers)
            return _status(
                400,
                "BadRequest",
                f"a container name must be specified for pod {name}, choose one of: [{choices}]",
            )
        container = container or containers[0]
        if container not in containers:
            return _status(400, "BadRequest", core_rules.container_not_valid(container, name))
        if info.get("waiting"):
            return _status(
                400,
                "BadRequest",
                f'container "{container}" in pod "{name}" is waiting to start: {info["waiting"]}',
            )
        return info, container

    async def _log(self, request: web.Request) -> web.StreamResponse:
        """A container's log as the kubelet serves it (pkg/kubelet/kuberuntime/logs): the last
        ``tailLines`` lines, of those the ones from ``sinceTime`` (whole seconds: the API server
        passes it on as RFC 3339) or ``sinceSeconds`` ago on, with ``timestamps``, followed."""
        answer = self._log_refusal(request)
        if isinstance(answer, web.StreamResponse):
            return answer
        info, query = answer[0], request.query
        since = None
        if "sinceTime" in query:
            moment = dt.datetime.fromisoformat(query["sinceTime"].replace("Z", "+00:00"))
            since = int(moment.timestamp()) * 10**9  # to the second
        elif "sinceSeconds" in query:
            since = time.time_ns() - int(query["sinceSeconds"]) * 10**9
        stamps = query.get("timestamps", "").lower() == "true"

        def shown(entries: list[tuple[int, str]]) -> bytes:
            kept = [(stamp, line) for stamp, line in entries if since is None or stamp >= since]
            return "".join(
                f"{_rfc3339_nano(stamp)} {line}\n" if stamps else f"{line}\n" for stamp, line in kept
            ).encode()

        stamped = self._stamped(info)
        first = stamped[-int(query["tailLines"]) :] if "tailLines" in query else list(stamped)
        if "tailLines" in query and int(query["tailLines"]) == 0:
            first = []
        cut = None if info.get("cut") else self.cut_after
        if query.get("follow", "").lower() != "true":
            if cut is None or cut[1] != "reset" or len(first) <= cut[0]:
                return web.Response(body=shown(first), content_type="text/plain")
            # A read cut midway: the first lines, then the connection drops (chunked, so the
            # client cannot take it for a whole body).
            info["cut"] = True
            response = web.StreamResponse()
            response.content_type = "text/plain"
            await response.prepare(request)
            await response.write(shown(first[: cut[0]]))
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        response = web.StreamResponse()
        response.content_type = "text/plain"
        await response.prepare(request)
        sent, position = 0, len(stamped)
        pending = first
        while True:
            for entry in pending:
                await response.write(shown([entry]))
                sent += 1
                if cut is not None and sent >= cut[0]:
                    info["cut"] = True
                    if cut[1] == "end":
                        await response.write_eof()
                        return response
                    if request.transport is not None:
                        request.transport.abort()
                    raise asyncio.CancelledError
            if info.get("phase") in ("Succeeded", "Failed") and position == len(self._stamped(info)):
                break
            if request.transport is None or request.transport.is_closing():
                return response  # the client went away
            await asyncio.sleep(0.1)
            stamped = self._stamped(info)
            pending, position = stamped[position:], len(stamped)
        await response.write_eof()
        return response

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
            "conditions": self._resumed(namespace, name, "TrainJob") + conditions,
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
        self._drive_pods(namespace, name, f"{name}-node-0-0-abcde", phase, log)
        self.custom().patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}
        )

    def drive_suspension(self, namespace: str, name: str, kind: str, *, suspended: bool) -> None:
        """The status a controller sets when its job is suspended or resumed (conditions from
        Trainer v2.3.0 ``setSuspendedCondition`` and Training Operator v1.9 ``ReconcileJobs``).

        A TrainJob: ``Suspended`` True (``Suspended``, "TrainJob is suspended"), then False
        (``Resumed``, "TrainJob is resumed"); its JobSet's own condition (``SuspendedJobs``,
        "jobset is suspended") is not copied to it, its child Jobs count as suspended. A
        PyTorchJob: ``Running`` False and ``Suspended`` True (``PyTorchJobSuspended``, "PyTorchJob
        <name> is suspended."), then ``Suspended`` False (``PyTorchJobResumed``, "... is resumed.").
        """
        group, version, plural = KINDS[kind]
        job = self._job(namespace, name, kind) or {}
        kept = [
            cond
            for cond in (job.get("status") or {}).get("conditions") or []
            if cond["type"] not in ("Suspended", "Running")
        ]
        running = next(
            (cond for cond in (job.get("status") or {}).get("conditions") or [] if cond["type"] == "Running"),
            None,
        )
        if kind == "PyTorchJob":
            reason = "PyTorchJobSuspended" if suspended else "PyTorchJobResumed"
            message = f"PyTorchJob {name} is {'suspended' if suspended else 'resumed'}."
            condition = {
                "reason": reason,
                "message": message,
                "lastTransitionTime": _now(),
                "lastUpdateTime": _now(),
            }
            if running is not None:  # only a job that ran has one; suspension turns it False
                kept.append({**running, **condition, "status": "False"} if suspended else running)
            kept.append({"type": "Suspended", "status": str(suspended), **condition})
            status: dict[str, Any] = {"conditions": kept}
        else:
            kept.append(
                {
                    "type": "Suspended",
                    "status": str(suspended),
                    "reason": "Suspended" if suspended else "Resumed",
                    "message": f"TrainJob is {'suspended' if suspended else 'resumed'}",
                    "lastTransitionTime": _now(),
                }
            )
            counts = {
                "ready": 0,
                "succeeded": 0,
                "failed": 0,
                "active": int(not suspended),
                "suspended": int(suspended),
            }
            status = {"conditions": kept, "jobsStatus": [{"name": "node", **counts}]}
        self.custom().patch_namespaced_custom_object_status(
            group, version, namespace, plural, name, {"status": status}
        )

    def _drive_pods(self, namespace: str, name: str, pod: str, phase: str, log: str) -> None:
        """The job's rank-0 pod, running with ``log``; its pods end before the job does."""
        has_pods = any(info["job"] == name for (n, _), info in self.pods.items() if n == namespace)
        if log or (phase == "running" and not has_pods):
            self.pods[(namespace, pod)] = {"job": name, "log": log, "phase": "Running"}
        ended = {"complete": "Succeeded", "failed": "Failed"}.get(phase)
        for (n, _), info in self.pods.items():
            if (
                ended
                and n == namespace
                and info["job"] == name
                and info["phase"] not in ("Succeeded", "Failed")
            ):
                info.update(phase=ended, waiting=None)

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
        self._drive_pods(namespace, name, f"{name}-master-0", phase, log)
        conditions = self._resumed(namespace, name, "PyTorchJob") + conditions
        self.custom().patch_namespaced_custom_object_status(
            group, version, namespace, plural, name, {"status": {"conditions": conditions}}
        )

    def _resumed(self, namespace: str, name: str, kind: str) -> list[dict[str, Any]]:
        """The job's ``Suspended`` condition once it was resumed (False): a controller keeps it."""
        job = self._job(namespace, name, kind) or {}
        conditions = (job.get("status") or {}).get("conditions") or []
        return [cond for cond in conditions if cond["type"] == "Suspended" and cond["status"] == "False"]

    def auto_run(
        self, namespace: str, *, extra_env: dict[str, str] | None = None, kind: str = "TrainJob"
    ) -> threading.Thread:
        """Run the pods of every job of ``kind`` created in ``namespace`` (a background kubelet stand-in)."""
        group, version, plural = KINDS[kind]
        from kubernetes import watch

        def loop() -> None:
            started: set[str] = set()
            # Re-watch on errors (the watch cache of a just-installed CRD lagging behind) while the
            # cluster runs: once it is stopped, its API server goes too, and asking again would only
            # print urllib3's retries after the test session's summary.
            while not self.stopped.is_set():
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
                    self.stopped.wait(0.2)

        thread = threading.Thread(target=loop, daemon=True, name=f"fake-kubelet-{namespace}")
        thread.start()
        return thread

    def _job(self, namespace: str, name: str, kind: str) -> dict[str, Any] | None:
        from kubernetes.client.rest import ApiException

        group, version, plural = KINDS[kind]
        try:
            return self.custom().get_namespaced_custom_object(group, version, namespace, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _runtime(self, namespace: str, job: dict[str, Any]) -> dict[str, Any]:
        ref = job["spec"]["runtimeRef"]
        if ref.get("kind", "ClusterTrainingRuntime") == "ClusterTrainingRuntime":
            return self.custom().get_cluster_custom_object(
                GROUP, VERSION, "clustertrainingruntimes", ref["name"]
            )
        return self.custom().get_namespaced_custom_object(
            GROUP, VERSION, namespace, "trainingruntimes", ref["name"]
        )

    def _await_suspend(
        self, namespace: str, name: str, kind: str, wanted: bool, until: threading.Event
    ) -> bool:
        """Poll the stored job until its suspend flag is ``wanted`` (True), or ``until`` is set or the
        job is gone (False): how the controllers learn of a queue's PATCH."""
        while not (until.is_set() or self.stopped.is_set()):
            job = self._job(namespace, name, kind)
            if job is None:
                return False
            if is_suspended(job) == wanted:
                return True
            until.wait(SUSPEND_POLL_SECONDS)
        return False

    def _preempt_when_suspended(self, namespace: str, name: str, kind: str, ended: threading.Event) -> None:
        if self._await_suspend(namespace, name, kind, True, ended):
            self.drive_suspension(namespace, name, kind, suspended=True)
            self.kubelet.stop(namespace, name)

    def run_pods(
        self, namespace: str, name: str, *, extra_env: dict[str, str] | None = None, kind: str = "TrainJob"
    ) -> list[int]:
        """Run the job's pods with the stand-in controller and kubelet; mark it done.

        While they run, ``spec.suspend: true`` (``spec.runPolicy.suspend`` for a PyTorchJob), as
        a queue sets it to preempt the job, is acted on as the controllers do: the Suspended
        condition at once, the pods deleted (:meth:`Kubelet.stop`); ``false`` again readmits the
        job: its condition says Resumed and new pods start with the same command.
        """
        self.kubelet.extra_env = dict(extra_env or {})

        def drive(phase: str, **kwargs: str) -> None:
            self.drive(namespace, name, phase, kind=kind, **kwargs)

        while True:
            job = self._job(namespace, name, kind)
            if job is None:
                return []
            pods, container, hosts = job_pods(
                job, self._runtime(namespace, job) if kind == "TrainJob" else None
            )
            if kind == "TrainJob":
                self._enforce_trainer_status(namespace, job, pods)
            ended = threading.Event()
            watcher = threading.Thread(
                target=self._preempt_when_suspended,
                args=(namespace, name, kind, ended),
                daemon=True,
                name=f"suspend-{name}",
            )
            watcher.start()
            try:
                codes = self.kubelet.run(
                    namespace,
                    name,
                    pods,
                    container=container,
                    hosts=hosts,
                    on_started=lambda: drive("running"),
                )
            except PodFailed as exc:
                drive("failed", reason="JobsFailed", message=str(exc))
                return [1]
            finally:
                ended.set()
                watcher.join()
            job = self._job(namespace, name, kind)
            if (namespace, name) not in self.kubelet.stopped or job is None or not is_suspended(job):
                break  # ended, or stopped by something else than a suspension (a drain): failed
            if not self._await_suspend(namespace, name, kind, False, threading.Event()):
                return codes  # deleted while suspended, or the cluster stopped
            self.drive_suspension(namespace, name, kind, suspended=False)
        if all(code == 0 for code in codes):
            drive("complete", reason="JobsCompleted", message="jobs completed")
        else:
            failed = self.kubelet.first_failed.get((namespace, name))
            if failed is None:
                failed = next(rank for rank, code in enumerate(codes) if code)
            drive(
                "failed",
                reason="JobsFailed",
                message=f"container {container} of node {failed} exited with code {codes[failed]}",
            )
        return codes


def is_suspended(job: dict[str, Any]) -> bool:
    """A TrainJob's ``spec.suspend``, a PyTorchJob's ``spec.runPolicy.suspend``."""
    spec = job.get("spec") or {}
    return bool(
        (spec.get("runPolicy") or {}).get("suspend")
        if job.get("kind") == "PyTorchJob"
        else spec.get("suspend")
    )


def _refused(body: dict[str, Any], plural: str) -> web.Response | None:
    """kube-apiserver's 422 for a Secret or ConfigMap it would not store (see core_rules)."""
    kind = "Secret" if plural == "secrets" else "ConfigMap"
    errors = core_rules.secret(body) if kind == "Secret" else core_rules.config_map(body)
    if not errors:
        return None
    return web.json_response(core_rules.invalid(kind, body["metadata"].get("name", ""), errors), status=422)


def _containers(pod: str, info: dict[str, Any]) -> list[str]:
    """The pod's containers: from its spec (the kubelet stand-in), else as a test declared them,
    else the program container its controller names it by (a PyTorchJob's master, a TrainJob's node)."""
    if "pod" in info:
        return [container["name"] for container in info["pod"]["spec"]["containers"]]
    return info.get("containers") or [PYTORCH if "-master-" in pod or "-worker-" in pod else NODE]


def _pod_status(pod: str, info: dict[str, Any]) -> dict[str, Any]:
    waiting, phase = info.get("waiting"), info.get("phase", "Running")
    if waiting:
        state: dict[str, Any] = {"waiting": {"reason": waiting}}
    elif phase in ("Succeeded", "Failed"):
        code = info.get("exit_code", 0 if phase == "Succeeded" else 1)
        state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}}
    else:
        state = {"running": {"startedAt": _now()}}
    statuses = [{"name": name, "state": state} for name in _containers(pod, info)]
    return {"phase": phase, "containerStatuses": statuses}


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

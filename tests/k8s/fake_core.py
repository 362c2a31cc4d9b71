"""FAKE: the parts of a cluster that cannot run here, in front of the real CRD server.

One loopback HTTP endpoint that a client uses as its only API server:

* ``/apis/...`` (TrainJobs, CRDs, watches) is proxied, streaming, to the REAL crdserver;
* ``/api/v1/.../secrets`` is a small in-memory store (crdserver has no core API);
* ``/api/v1/.../pods`` and ``pods/{name}/log`` serve the pods of TrainJobs that the
  status driver "started".

The status driver stands in for the Trainer controller, JobSet and the kubelet
(no GPU pods here): tests call :meth:`FakeCluster.drive` to set a TrainJob's status
the way the controller would (through the real ``/status`` subresource), and
:meth:`FakeCluster.run_pods` to execute the trainer container's command locally,
with the env from the TrainJob spec (secretKeyRef resolved from the fake store),
then mark the job Complete or Failed by its exit code.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import ssl
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, TCPConnector, web

from tests.k8s.harness import ApiServer, free_port

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeCluster:
    def __init__(self, server: ApiServer):
        self.server = server
        self.port = free_port()
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}  # (ns, pod) -> {"job": name, "log": str}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for request counting
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
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/api/v1/namespaces/{ns}/secrets", self._secrets)
        app.router.add_route("*", "/api/v1/namespaces/{ns}/secrets/{name}", self._secret)
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self._pods)
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}/log", self._log)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        context = ssl.create_default_context(cafile=self.server.ca_cert)
        self._session = ClientSession(connector=TCPConnector(ssl=context, limit=0), auto_decompress=False)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, shutdown_timeout=0.5).start()

    def api_client(self):
        from kubernetes import client

        config = client.Configuration()
        config.host = self.url
        return client.ApiClient(config)

    # --- proxy to the real crdserver --------------------------------------------------------

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        body = await request.read()
        upstream = await self._session.request(
            request.method,
            f"{self.server.url}{request.rel_url}",
            headers=headers,
            data=body or None,
            timeout=None,
        )
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
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

    # --- fake secrets ------------------------------------------------------------------------

    async def _secrets(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        ns = request.match_info["ns"]
        if request.method != "POST":
            items = [s for (n, _), s in self.secrets.items() if n == ns]
            return web.json_response({"kind": "SecretList", "apiVersion": "v1", "items": items})
        body = await request.json()
        name = body["metadata"]["name"]
        if (ns, name) in self.secrets:
            return _status(409, "AlreadyExists", f'secrets "{name}" already exists')
        body["metadata"].update(namespace=ns, uid=f"uid-{name}", resourceVersion="1")
        self.secrets[(ns, name)] = body
        return web.json_response(body, status=201)

    async def _secret(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.secrets and request.method != "PUT":
            return _status(404, "NotFound", f'secrets "{key[1]}" not found')
        if request.method == "DELETE":
            self.secrets.pop(key)
            return web.json_response({"kind": "Status", "status": "Success"})
        if request.method == "PATCH":
            patch = await request.json()
            self.secrets[key]["metadata"].update(patch.get("metadata", {}))
        elif request.method == "PUT":
            self.secrets[key] = await request.json()
        return web.json_response(self.secrets[key])

    # --- fake pods and logs -------------------------------------------------------------------

    async def _pods(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        ns, selector = request.match_info["ns"], request.query.get("labelSelector", "")
        wanted = selector.partition("=")[2]
        items = [
            {
                "metadata": {
                    "name": pod,
                    "namespace": n,
                    "labels": {"jobset.sigs.k8s.io/jobset-name": info["job"]},
                }
            }
            for (n, pod), info in self.pods.items()
            if n == ns and (not wanted or info["job"] == wanted)
        ]
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})

    async def _log(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.pods:
            return _status(404, "NotFound", f'pods "{key[1]}" not found')
        lines = self.pods[key]["log"].splitlines()
        tail = int(request.query.get("tailLines", 0) or 0)
        return web.Response(text="\n".join(lines[-tail:] if tail else lines) + "\n")

    # --- status driver (stands in for the Trainer controller + kubelet) ----------------------

    def custom(self):
        from kubernetes import client

        return client.CustomObjectsApi(self.server.api_client())

    def drive(
        self, namespace: str, name: str, phase: str, *, reason: str = "", message: str = "", log: str = ""
    ) -> None:
        """Set the TrainJob status like the controller does for ``phase``: running/complete/failed/suspended."""
        conditions, active = [], 0
        if phase == "running":
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
                    "ready": active,
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
        if log or phase == "running":
            self.pods[(namespace, f"{name}-node-0-0-abcde")] = {"job": name, "log": log}

    def auto_run(self, namespace: str, *, extra_env: dict[str, str] | None = None) -> threading.Thread:
        """Run the pods of every TrainJob created in ``namespace`` (a background kubelet stand-in)."""
        from kubernetes import watch

        def loop() -> None:
            started: set[str] = set()
            stream = watch.Watch().stream(
                self.custom().list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                timeout_seconds=900,
            )
            for event in stream:
                name = event["object"]["metadata"]["name"]
                if event["type"] == "ADDED" and name not in started:
                    started.add(name)
                    threading.Thread(
                        target=self.run_pods,
                        args=(namespace, name),
                        kwargs={"extra_env": extra_env},
                        daemon=True,
                    ).start()

        thread = threading.Thread(target=loop, daemon=True, name=f"fake-kubelet-{namespace}")
        thread.start()
        return thread

    def run_pods(self, namespace: str, name: str, *, extra_env: dict[str, str] | None = None) -> int:
        """Run the trainer container's command of a TrainJob here, as its rank-0 pod would.

        The stand-in image already has the provider installed: ``pip`` is a no-op and
        ``python`` is this interpreter.
        """
        job = self.custom().get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        trainer = job["spec"]["trainer"]
        image_bin = tempfile.mkdtemp(prefix="fake-image-bin-")
        Path(image_bin, "pip").write_text("#!/bin/sh\nexit 0\n")
        os.chmod(Path(image_bin, "pip"), 0o755)
        Path(image_bin, "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        os.chmod(Path(image_bin, "python"), 0o755)
        env = {**os.environ, **(extra_env or {}), "PATH": f"{image_bin}:{os.environ['PATH']}"}
        for entry in trainer.get("env", []):
            if "value" in entry:
                env[entry["name"]] = entry["value"]
            elif ref := entry.get("valueFrom", {}).get("secretKeyRef"):
                data = self.secrets[(namespace, ref["name"])]["data"][ref["key"]]
                env[entry["name"]] = base64.b64decode(data).decode()
        self.drive(namespace, name, "running")
        completed = subprocess.run(trainer["command"], env=env, capture_output=True, text=True, check=False)
        self.pods[(namespace, f"{name}-node-0-0-abcde")] = {
            "job": name,
            "log": completed.stdout + completed.stderr,
        }
        if completed.returncode == 0:
            self.drive(namespace, name, "complete", reason="JobsCompleted", message="jobs completed")
        else:
            self.drive(
                namespace,
                name,
                "failed",
                reason="JobsFailed",
                message=f"container node exited with code {completed.returncode}",
            )
        return completed.returncode


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        },
        status=code,
    )

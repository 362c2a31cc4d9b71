"""A real Kubernetes API server for CRDs on loopback: etcd + crdserver (apiextensions-apiserver).

It serves custom resources with the real CRD machinery: OpenAPI validation (422
with field paths), strict field validation, defaulting, CEL rules, ``/status``,
label selectors, watch and 410 Gone. It has no core API (pods, logs, secrets)
and no controllers: see ``fake_core.py`` for those.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CRDSERVER = HERE / ".build" / "crdserver"
CRD_FILE = HERE / "trainjob-crd.yaml"
UNAVAILABLE = "k8s test apiserver unavailable: run tests/k8s/build-crdserver.sh; apt-get install etcd-server"


def available() -> bool:
    return CRDSERVER.exists() and shutil.which("etcd") is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not become ready in {timeout}s")


class ApiServer:
    """etcd + crdserver on free loopback ports, stopped by PID."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="crdserver-"))
        self.port = free_port()
        self.processes: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> str:
        return str(self.dir / "certs" / "apiserver.crt")

    def start(self) -> ApiServer:
        import requests
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # readiness probes only

        client, peer = free_port(), free_port()
        log = (self.dir / "etcd.log").open("w")
        self.processes.append(
            subprocess.Popen(
                [
                    "etcd",
                    "--name",
                    "test",
                    "--data-dir",
                    str(self.dir / "etcd"),
                    "--log-level",
                    "warn",
                    "--unsafe-no-fsync",
                    "--listen-client-urls",
                    f"http://127.0.0.1:{client}",
                    "--advertise-client-urls",
                    f"http://127.0.0.1:{client}",
                    "--listen-peer-urls",
                    f"http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls",
                    f"http://127.0.0.1:{peer}",
                    "--initial-cluster",
                    f"test=http://127.0.0.1:{peer}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        _wait_until(lambda: requests.get(f"http://127.0.0.1:{client}/health", timeout=1).ok, "etcd")
        log = (self.dir / "crdserver.log").open("w")
        self.processes.append(
            subprocess.Popen(
                [
                    str(CRDSERVER),
                    f"--etcd-servers=http://127.0.0.1:{client}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={self.port}",
                    f"--cert-dir={self.dir / 'certs'}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        _wait_until(
            lambda: requests.get(f"{self.url}/readyz", verify=False, timeout=1).text == "ok", "crdserver"
        )
        return self

    def stop(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- CRDs -------------------------------------------------------------------------

    def api_client(self):
        from kubernetes import client

        config = client.Configuration()
        config.host = self.url
        config.ssl_ca_cert = self.ca_cert
        return client.ApiClient(config)

    def install_crd(self, crd: dict) -> None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        api = client.ApiextensionsV1Api(self.api_client())
        name = crd["metadata"]["name"]
        with contextlib.suppress(ApiException):
            api.delete_custom_resource_definition(name)
            _wait_until(lambda: not _exists(api, name), f"deletion of CRD {name}")
        api.create_custom_resource_definition(crd)

        def established() -> bool:
            conditions = api.read_custom_resource_definition(name).status.conditions or []
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        _wait_until(established, f"CRD {name}")
        # The served schema takes a moment longer than Established; probe until a dry read works.
        objects = client.CustomObjectsApi(self.api_client())
        group, version, plural = (
            crd["spec"]["group"],
            crd["spec"]["versions"][0]["name"],
            crd["spec"]["names"]["plural"],
        )
        _wait_until(
            lambda: objects.list_namespaced_custom_object(group, version, "default", plural) is not None,
            "CRD serving",
        )


def _exists(api, name: str) -> bool:
    from kubernetes.client.rest import ApiException

    try:
        api.read_custom_resource_definition(name)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def kubeconfig(server_url: str, namespace: str = "default") -> dict:
    """A kubeconfig for ``server_url`` (the fake cluster's loopback endpoint)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server_url}}],
        "users": [{"name": "test", "user": {"token": "not-a-real-token"}}],
        "contexts": [
            {"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}
        ],
    }


def connection_uri(server_url: str, namespace: str = "default") -> str:
    """An Airflow connection (cncf ``kubernetes`` type, JSON form) with an inline kubeconfig."""
    import json

    return json.dumps(
        {
            "conn_type": "kubernetes",
            "extra": {"kube_config": json.dumps(kubeconfig(server_url, namespace)), "namespace": namespace},
        }
    )


def trainjob_crd(generation: str = "both") -> dict:
    """The TrainJob CRD (tests/k8s/trainjob-crd.yaml) as served by one Trainer release.

    ``v2.1``: spec.labels/annotations/podTemplateOverrides, no runtimePatches;
    ``v2.2``: runtimePatches only (the v2.1 fields were removed); ``both``: the file as is.
    """
    crd = yaml.safe_load(CRD_FILE.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    if generation == "v2.1":
        spec.pop("runtimePatches")
        spec["trainer"]["properties"]["numProcPerNode"] = {"x-kubernetes-int-or-string": True}
    elif generation == "v2.2":
        for key in ("labels", "annotations", "podTemplateOverrides"):
            spec.pop(key)
    return crd


if __name__ == "__main__":  # manual check: python tests/k8s/harness.py
    server = ApiServer().start()
    try:
        server.install_crd(trainjob_crd())
        print("ready at", server.url, "pid", os.getpid())
    finally:
        server.stop()

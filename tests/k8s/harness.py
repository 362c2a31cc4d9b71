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
UPSTREAM = HERE / "upstream"
#: Trainer releases the tests run against, and the upstream files each one installs.
RELEASES = {
    "v2.1.0": (
        "trainjobs-v2.1.0.yaml",
        "clustertrainingruntimes-v2.1.0.yaml",
        "runtime-torch-distributed-v2.1.0.yaml",
    ),
    "v2.2.1": (
        "trainjobs-v2.2.1.yaml",
        "clustertrainingruntimes-v2.3.0.yaml",
        "runtime-torch-distributed-v2.3.0.yaml",
    ),
    "v2.3.0": (
        "trainjobs-v2.3.0.yaml",
        "clustertrainingruntimes-v2.3.0.yaml",
        "runtime-torch-distributed-v2.3.0.yaml",
    ),
}
TRAINING_RUNTIMES_CRD = "trainingruntimes-v2.3.0.yaml"
#: Training Operator v1's PyTorchJob CRD (kubeflow/training-operator v1.9.4), installed beside them.
PYTORCHJOB_CRD = "pytorchjobs-v1.9.4.yaml"
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
        self.etcd_url = f"http://127.0.0.1:{client}"
        log = (self.dir / "etcd.log").open("w")
        self.etcd = subprocess.Popen(
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
                self.etcd_url,
                "--advertise-client-urls",
                self.etcd_url,
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
        self.processes.append(self.etcd)
        _wait_until(lambda: requests.get(f"{self.etcd_url}/health", timeout=1).ok, "etcd")
        self.start_apiserver()
        return self

    def start_apiserver(self, *, wait: bool = True) -> None:
        """(Re)start crdserver on the same port and certificates, over the same etcd."""
        import requests

        log = (self.dir / "crdserver.log").open("a")
        self.apiserver = subprocess.Popen(
            [
                str(CRDSERVER),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={self.dir / 'certs'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(self.apiserver)
        if wait:
            _wait_until(
                lambda: requests.get(f"{self.url}/readyz", verify=False, timeout=1).text == "ok", "crdserver"
            )

    def stop_apiserver(self) -> None:
        """Stop crdserver as a restart would (etcd keeps every object); killed if it lingers on watches."""
        self.apiserver.send_signal(signal.SIGTERM)
        try:
            self.apiserver.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.apiserver.kill()
            self.apiserver.wait()
        self.processes.remove(self.apiserver)

    def freeze(self) -> None:
        """SIGSTOP the API server: connections stay open and nothing answers (a half-open peer)."""
        self.apiserver.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.apiserver.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
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
        if crd["spec"]["scope"] == "Cluster":
            probe = lambda: objects.list_cluster_custom_object(group, version, plural)  # noqa: E731
        else:
            probe = lambda: objects.list_namespaced_custom_object(group, version, "default", plural)  # noqa: E731
        _wait_until(lambda: probe() is not None, "CRD serving")


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


def upstream(name: str) -> list[dict]:
    """The objects of one upstream fixture file."""
    return [doc for doc in yaml.safe_load_all((UPSTREAM / name).read_text()) if doc]


def install_trainer(server: ApiServer, release: str) -> None:
    """The CRDs of one Trainer release (TrainJob, both runtime kinds) and its torch-distributed runtime,
    and the v1 PyTorchJob CRD (clusters in the middle of a migration serve both)."""
    from kubernetes import client

    trainjobs, cluster_runtimes, runtime = RELEASES[release]
    for name in (trainjobs, cluster_runtimes, TRAINING_RUNTIMES_CRD, PYTORCHJOB_CRD):
        for crd in upstream(name):
            server.install_crd(crd)
    objects = client.CustomObjectsApi(server.api_client())
    for body in upstream(runtime):
        objects.create_cluster_custom_object(
            "trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", body
        )


if __name__ == "__main__":  # manual check: python tests/k8s/harness.py
    server = ApiServer().start()
    try:
        install_trainer(server, "v2.3.0")
        print("ready at", server.url, "pid", os.getpid())
    finally:
        server.stop()

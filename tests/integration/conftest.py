"""Fixtures for tests against a real Kubernetes API server (skipped with a reason when it cannot be built)."""

from __future__ import annotations

import uuid

import pytest

from tests.k8s import harness


@pytest.fixture(scope="session")
def k8s_server():
    if not harness.available():
        pytest.skip(harness.UNAVAILABLE)
    server = harness.ApiServer().start()
    server.generation = None
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_cluster(k8s_server):
    from tests.k8s.fake_core import FakeCluster

    cluster = FakeCluster(k8s_server).start()
    yield cluster
    cluster.stop()


def use_crd(server, generation: str) -> None:
    if server.generation != generation:
        server.install_crd(harness.trainjob_crd(generation))
        server.generation = generation


@pytest.fixture
def cluster(fake_cluster, request):
    """The fake cluster with the TrainJob CRD of the generation a test asks for (default v2.2)."""
    marker = request.node.get_closest_marker("crd")
    use_crd(fake_cluster.server, marker.args[0] if marker else "v2.2")
    return fake_cluster


@pytest.fixture
def namespace():
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def k8s_connection(cluster, namespace, monkeypatch):
    """``kubernetes_default`` (a cncf ``kubernetes`` connection) pointing at the test cluster."""
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", harness.connection_uri(cluster.url, namespace))
    return "kubernetes_default"

"""Fixtures for tests against a real Kubernetes API server with the upstream Trainer CRDs.

Skipped with the reason when the server cannot be built. ``@pytest.mark.trainer("v2.1.0")``
picks the Trainer release whose CRDs a test runs against (default: the newest).
"""

from __future__ import annotations

import uuid

import pytest

from tests.k8s import harness

NEWEST = "v2.3.0"


@pytest.fixture(scope="session")
def k8s_server():
    if not harness.available():
        pytest.skip(harness.UNAVAILABLE)
    server = harness.ApiServer().start()
    server.release = None
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_cluster(k8s_server):
    from tests.k8s.fake_core import FakeCluster

    cluster = FakeCluster(k8s_server).start()
    yield cluster
    cluster.stop()


def use_release(server, release: str) -> None:
    if server.release != release:
        harness.install_trainer(server, release)
        server.release = release


@pytest.fixture
def cluster(fake_cluster, request):
    """The fake cluster with the upstream CRDs of the Trainer release a test asks for."""
    marker = request.node.get_closest_marker("trainer")
    release = marker.args[0] if marker else NEWEST
    use_release(fake_cluster.server, release)
    fake_cluster.release = release
    return fake_cluster


@pytest.fixture
def namespace():
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def k8s_connection(cluster, namespace, monkeypatch):
    """``kubernetes_default`` (a cncf ``kubernetes`` connection) pointing at the test cluster."""
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", harness.connection_uri(cluster.url, namespace))
    return "kubernetes_default"

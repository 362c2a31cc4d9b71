"""What a failed create, a deadline on a frozen API server and an early failure leave, and when the
wait returns: against the real API server (upstream CRDs) with the fake core for Secrets/ConfigMaps.

Bounds are measured margins around the deadline, with the margin the code allows
(``DEADLINE_GRACE_SECONDS`` + ``CLEANUP_SECONDS``) plus slack for a loaded machine: before, the
frozen wait ran ~190 s past a 6 s deadline and the early failure returned 10 s late.
"""

from __future__ import annotations

import threading
import time

import pytest

from airflow_provider_sft.core.backends.base import JobStatus
from airflow_provider_sft.core.backends.kubernetes import Credentials, KubeApiError
from airflow_provider_sft.core.backends.kubernetes.backend import CLEANUP_SECONDS
from airflow_provider_sft.core.backends.kubernetes.watch import DEADLINE_GRACE_SECONDS
from tests.integration.test_kubernetes_backend import TOKEN, backend, make_run, trainjobs

SLACK_SECONDS = 5


def test_a_refused_secret_rolls_back_the_configmap_already_made(cluster, namespace, kind):
    """An account that may create ConfigMaps but not Secrets (a partial RBAC rule): the server's 403
    on the Secret must not leave the program's ConfigMap behind, nor any job."""
    b = backend(cluster, namespace, credentials=Credentials(hf_token=TOKEN), job_kind=kind)
    cluster.forbidden = "/secrets"
    try:
        with pytest.raises(KubeApiError, match="403") as info:
            b.submit(make_run())
    finally:
        cluster.forbidden = ""
    assert "secrets is forbidden" in str(info.value)
    assert ("POST", f"/api/v1/namespaces/{namespace}/configmaps") in cluster.requests  # it was made
    assert cluster.configmaps_in(namespace) == [] and cluster.secrets_in(namespace) == []
    assert trainjobs(cluster, namespace, kind) == []


def test_a_frozen_server_does_not_hold_the_wait_past_its_deadline(cluster, namespace):
    b = backend(cluster, namespace)
    handle = b.submit(make_run())
    cluster.drive(namespace, handle.name, "running")
    threading.Timer(1.5, cluster.server.freeze).start()  # once the wait watches
    deadline = 6
    started = time.monotonic()
    try:
        result = b.wait(handle, on_log=lambda _line: None, timeout_seconds=deadline)
    finally:
        cluster.server.thaw()
    elapsed = time.monotonic() - started
    assert result.status is JobStatus.TIMED_OUT
    assert f"did not answer within {CLEANUP_SECONDS}s" in result.message  # said, not waited for
    assert deadline <= elapsed < deadline + DEADLINE_GRACE_SECONDS + CLEANUP_SECONDS + SLACK_SECONDS
    b.cancel(handle)  # thawed: now it goes
    assert trainjobs(cluster, namespace) == []


def test_a_job_that_fails_before_any_pod_returns_at_once(cluster, namespace):
    b = backend(cluster, namespace)
    handle = b.submit(make_run())
    lines: list[str] = []
    fail = threading.Timer(
        1.0, lambda: cluster.drive(namespace, handle.name, "failed", reason="JobsFailed", message="quota")
    )
    fail.start()
    started = time.monotonic()
    result = b.wait(handle, on_log=lines.append, timeout_seconds=120)
    late = time.monotonic() - started - 1.0
    assert result.status is JobStatus.FAILED and "JobsFailed: quota" in result.message
    assert late < SLACK_SECONDS  # no log drain for a pod that never was (it was 10 s)
    assert trainjobs(cluster, namespace) == []

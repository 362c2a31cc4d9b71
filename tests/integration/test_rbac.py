"""deploy/rbac.yaml grants exactly what the provider calls: every request it sends is allowed.

The provider's whole Kubernetes lifecycle runs against the real API server through the
fake core's proxy, which records each request; each is turned into the (API group,
resource, verb, name) that RBAC authorizes and checked against the shipped rules. A
rule the provider never needs is an error too: least privilege.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs

import pytest
import yaml

from airflow_provider_sft.core.backends.base import JobStatus
from airflow_provider_sft.core.backends.kubernetes import Credentials
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.triggers.training_job import TrainingJobTrigger
from tests.conftest import REPO_ROOT
from tests.integration.test_kubernetes_backend import backend, make_run
from tests.integration.test_trainjob_trigger import connection  # noqa: F401  (a fixture)

RBAC = REPO_ROOT / "deploy" / "rbac.yaml"
_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?/(?P<resource>[^/]+)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$"
)
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def authorization(method: str, path: str, query: str) -> tuple[str, str, str, str | None]:
    """(apiGroup, resource[/subresource], verb, name) of one request, as RBAC sees it."""
    match = _PATH.match(path)
    assert match, path
    group = "" if match["core"] else match["group"]
    resource = match["resource"] + (f"/{match['sub']}" if match["sub"] else "")
    if method == "GET":
        watch = parse_qs(query.lower()).get("watch") == ["true"]
        verb = "watch" if watch else ("get" if match["name"] else "list")
    else:
        verb = _VERBS[method]
    return group, resource, verb, match["name"]


def rules() -> list[dict]:
    return [
        rule
        for doc in yaml.safe_load_all(RBAC.read_text())
        if doc["kind"] in ("Role", "ClusterRole")
        for rule in doc["rules"]
    ]


def allowed(group, resource, verb, name) -> dict | None:
    for rule in rules():
        matches = group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
        if matches and ("resourceNames" not in rule or name in rule["resourceNames"]):
            return rule
    return None


def trigger_start_timeout(handle, conn_id):
    """The triggerer's wait (the shared watch: a list and a watch of the provider's jobs of the
    kind, a read of the job) until a start deadline a second away."""
    start_deadline = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()
    trigger = TrainingJobTrigger(
        job=handle.to_dict(),
        kubernetes_conn_id=conn_id,
        start_deadline=start_deadline,
        start_timeout_seconds=1,
    )

    async def first():
        return (await asyncio.wait_for(trigger.run().__anext__(), 30)).payload

    return asyncio.run(first())


def test_every_call_the_provider_makes_is_granted_and_nothing_more(cluster, namespace, connection):  # noqa: F811
    cluster.queries.clear()
    b = backend(cluster, namespace, credentials=Credentials(hf_token="hf_x"), start_timeout_seconds=1)
    handle = b.submit(make_run())  # CRD, runtime, secret, create, owner
    b.submit(make_run())  # re-attach
    cluster.add_pod(namespace, handle.name, phase="Pending")
    assert (
        b.wait(handle, on_log=lambda _l: None).status is JobStatus.TIMED_OUT
    )  # watch, pods, events, log, delete
    handle = b.submit(make_run())
    assert trigger_start_timeout(handle, connection)["status"] == "timeout"  # list, watch, get
    cluster.drive(namespace, handle.name, "running", log="[sft] step 1")
    cluster.drive(namespace, handle.name, "failed", reason="JobsFailed")
    b.submit(make_run())  # a failed job is deleted and submitted again
    b.cancel(handle)
    with pytest.raises(InvalidParameterError):
        backend(cluster, namespace, runtime_kind="TrainingRuntime").submit(make_run())  # namespaced runtime
    with pytest.raises(InvalidParameterError):
        backend(cluster, namespace, runtime_name="missing").submit(make_run())  # lists the cluster's runtimes

    v1 = backend(cluster, namespace, job_kind="PyTorchJob", start_timeout_seconds=1)
    handle = v1.submit(make_run("sft-run-v1"))  # a PyTorchJob: create, owner
    v1.submit(make_run("sft-run-v1"))  # re-attach
    assert v1.wait(handle, on_log=lambda _l: None).status is JobStatus.TIMED_OUT  # watch, pods, delete
    assert trigger_start_timeout(v1.submit(make_run("sft-run-v1b")), connection)["status"] == "timeout"

    used = {authorization(*query) for query in cluster.queries}
    denied = sorted(u for u in used if not allowed(*u))
    assert denied == []
    needed = {(group, resource, verb) for group, resource, verb, _ in used}
    unused = [
        (group, resource, verb)
        for rule in rules()
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        if (group, resource, verb) not in needed
    ]
    assert unused == []

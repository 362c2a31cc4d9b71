"""Conformance of the stand-in Trainer status server (tests/k8s/status_server.py) with
``pkg/statusserver/server.go`` of kubeflow/trainer v2.3.0: its answers, and the REAL API server's
verdict (the upstream v2.3.0 CRD's schema and CEL rule) on what it applies."""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from tests.k8s.status_server import audience, status_path

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
NOW = "2026-12-06T04:00:00Z"


@pytest.fixture
def job(cluster, namespace) -> str:
    name = f"job-{uuid.uuid4().hex[:6]}"
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": name},
        "spec": {"runtimeRef": {"name": "torch-distributed"}},
    }
    cluster.custom().create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    return name


def post(server, namespace: str, name: str, body, *, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(
        server.tcp_url + status_path(namespace, name),
        data=data,
        headers=headers,
        verify=str(server.certificates.ca_cert),
        timeout=30,
    )


def token_for(cluster, namespace: str, name: str, **kwargs) -> str:
    return cluster.token_issuer().mint(namespace, [audience(namespace, name)], **kwargs)


def stored(cluster, namespace: str, name: str) -> dict:
    job = cluster.custom().get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return job.get("status", {}).get("trainerStatus"), job["metadata"]["managedFields"]


def refusal(code: int, reason: str, message: str) -> dict:
    """server.go badRequest's body."""
    return {"metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}


def status(**fields) -> dict:
    return {"trainerStatus": {"lastUpdatedTime": NOW, **fields}}


def test_an_accepted_payload_is_applied_to_the_status_subresource(cluster, trainer_status, namespace, job):
    body = status(
        progressPercentage=45,
        estimatedRemainingSeconds=120,
        metrics=[{"name": "loss", "value": "0.15"}],
        unknownField="dropped, as Go's decoder drops it",
    )
    answer = post(trainer_status, namespace, job, body, token=token_for(cluster, namespace, job))
    assert answer.status_code == 200, answer.text
    written, managed = stored(cluster, namespace, job)
    assert written == {
        "progressPercentage": 45,
        "estimatedRemainingSeconds": 120,
        "metrics": [{"name": "loss", "value": "0.15"}],
        "lastUpdatedTime": NOW,
    }
    assert answer.json() == {"trainerStatus": written}
    assert any(
        m["manager"] == "trainer-status" and m["operation"] == "Apply" and m.get("subresource") == "status"
        for m in managed
    )


def test_a_token_not_for_this_job_is_refused_with_403(cluster, trainer_status, namespace, job):
    forbidden = refusal(403, "Forbidden", "Forbidden")
    other_job = token_for(cluster, namespace, "another-job")
    other_namespace = cluster.token_issuer().mint("elsewhere", [audience(namespace, job)])
    expired = token_for(cluster, namespace, job, expires_in=-60)
    foreign = "eyJhbGciOiJub25lIn0.eyJhdWQiOiJ4In0."  # unsigned
    for token in (other_job, other_namespace, expired, foreign, None):
        answer = post(trainer_status, namespace, job, status(progressPercentage=1), token=token)
        assert (answer.status_code, answer.json()) == (403, forbidden)
    assert stored(cluster, namespace, job)[0] is None


def test_a_missing_job_is_404(cluster, trainer_status, namespace):
    answer = post(
        trainer_status,
        namespace,
        "gone",
        status(progressPercentage=1),
        token=token_for(cluster, namespace, "gone"),
    )
    assert (answer.status_code, answer.json()) == (404, refusal(404, "NotFound", "Train job not found"))
    assert requests.get(
        trainer_status.tcp_url + status_path(namespace, "gone"),
        verify=str(trainer_status.certificates.ca_cert),
        timeout=30,
    ).json() == refusal(404, "NotFound", "Not found")


def test_what_the_crd_refuses_comes_back_as_422_with_the_api_servers_message(
    cluster, trainer_status, namespace, job
):
    token = token_for(cluster, namespace, job)
    many = [{"name": f"m{i}", "value": "1"} for i in range(300)]
    cases = {
        "300 metrics": (status(metrics=many), "Too many: 300: must have at most 256 items"),
        # server.go always sets the time: a missing one is Go's zero metav1.Time, sent as null
        "no lastUpdatedTime": (
            {"trainerStatus": {"progressPercentage": 5}},
            'status.trainerStatus.lastUpdatedTime: Invalid value: "null": '
            "trainerStatus.lastUpdatedTime in body must be of type string",
        ),
        "101%": (status(progressPercentage=101), "should be less than or equal to 100"),
        "negative ETA": (status(estimatedRemainingSeconds=-1), "should be greater than or equal to 0"),
        "long value": (status(metrics=[{"name": "loss", "value": "1" * 65}]), "may not be more than 64"),
    }
    for case, (body, expected) in cases.items():
        answer = post(trainer_status, namespace, job, body, token=token)
        assert answer.status_code == 422, (case, answer.text)
        message = answer.json()["message"]
        assert expected in message and f'TrainJob.trainer.kubeflow.org "{job}" is invalid' in message, (
            case,
            message,
        )
        assert answer.json()["reason"] == "Invalid"
    assert stored(cluster, namespace, job)[0] is None


def test_what_gos_decoder_refuses_is_invalid_payload_and_no_status_is_a_no_op(
    cluster, trainer_status, namespace, job
):
    token = token_for(cluster, namespace, job)
    invalid = refusal(422, "Invalid", "Invalid payload")
    for body in (
        "{not json",
        status(progressPercentage=45.5),
        status(progressPercentage="45"),
        {"trainerStatus": {"lastUpdatedTime": "yesterday"}},
    ):
        answer = post(trainer_status, namespace, job, body, token=token)
        assert (answer.status_code, answer.json()) == (422, invalid), body
    answer = post(trainer_status, namespace, job, {"other": 1}, token=token)
    assert answer.status_code == 200 and stored(cluster, namespace, job)[0] is None

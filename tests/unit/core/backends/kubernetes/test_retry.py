"""The one retry policy of the Kubernetes client (tenacity), on a fake clock (no real sleeping)."""

from __future__ import annotations

import asyncio
import json

import pytest

from airflow_provider_sft.core.backends.kubernetes.retry import KubeApiError, RetryPolicy
from tests.fakes.clock import FakeClock


class ApiError(Exception):
    """Shaped like kubernetes.client.ApiException: status, reason, body, headers."""

    def __init__(self, status, message="", headers=None):
        super().__init__(status)
        self.status, self.reason, self.headers = (
            status,
            {
                429: "Too Many Requests",
                503: "Service Unavailable",
                422: "Unprocessable Entity",
                403: "Forbidden",
            }.get(status, "Error"),
            headers or {},
        )
        self.body = json.dumps({"kind": "Status", "message": message})


def script(*outcomes):
    calls = []

    async def call():
        outcome = outcomes[len(calls)]
        calls.append(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return call, calls


def run(policy, action, call):
    return asyncio.run(policy.call(action, call))


def test_transient_errors_are_retried_with_backoff_and_retry_after():
    clock = FakeClock()
    call, _calls = script(
        ApiError(503), ApiError(429, headers={"Retry-After": "7"}), ConnectionResetError(), "ok"
    )
    assert run(RetryPolicy(clock=clock, base_seconds=0.5), "Get TrainJob ns/a", call) == "ok"
    assert clock.slept == [0.5, 7.0, 2.0]  # exponential, except where the server said when


def test_client_errors_are_not_retried_and_carry_the_server_message():
    clock = FakeClock()
    call, calls = script(
        ApiError(422, 'TrainJob.trainer.kubeflow.org "x" is invalid: spec.trainer.numNodes: Invalid value: 0')
    )
    with pytest.raises(
        KubeApiError, match=r"Create TrainJob ns/x: 422 Unprocessable Entity: .*spec.trainer.numNodes"
    ) as info:
        run(RetryPolicy(clock=clock), "Create TrainJob ns/x", call)
    assert info.value.status == 422 and len(calls) == 1 and clock.slept == []


def test_forbidden_names_the_permissions_to_grant():
    call, _ = script(ApiError(403, "trainjobs is forbidden"))
    with pytest.raises(KubeApiError, match="Grant the Airflow service account"):
        run(RetryPolicy(clock=FakeClock()), "List TrainJobs in ns", call)


def test_retries_run_out():
    clock = FakeClock()
    call, calls = script(*[ApiError(503)] * 3)
    with pytest.raises(KubeApiError, match="503"):
        run(RetryPolicy(clock=clock, attempts=3), "Get TrainJob ns/a", call)
    assert len(calls) == 3 and len(clock.slept) == 2


def test_forbidden_is_never_retried():
    clock = FakeClock()
    call, calls = script(ApiError(403, "trainjobs is forbidden"), "ok")
    with pytest.raises(KubeApiError) as info:
        run(RetryPolicy(clock=clock), "Get TrainJob ns/a", call)
    assert info.value.status == 403 and len(calls) == 1 and clock.slept == []
    assert "deploy/rbac.yaml" in str(info.value)


def test_each_retry_is_logged():
    logged = []
    call, _ = script(ApiError(503), "ok")
    run(RetryPolicy(clock=FakeClock(), log=logged.append), "Get TrainJob ns/a", call)
    assert logged == ["Get TrainJob ns/a: transient error (Service Unavailable), retry 1 in 0.5s"]


def test_no_answer_is_transient_and_named():
    clock = FakeClock()
    call, calls = script(*[TimeoutError()] * 2)
    with pytest.raises(KubeApiError, match="Get TrainJob ns/a: 0 TimeoutError") as info:
        run(RetryPolicy(clock=clock, attempts=2), "Get TrainJob ns/a", call)
    assert info.value.status == 0 and len(calls) == 2


def test_a_404_about_an_object_differs_from_an_api_not_served():
    gone = ApiError(404, 'trainjobs.trainer.kubeflow.org "a" not found')
    gone.body = json.dumps(
        {"kind": "Status", "message": "not found", "details": {"name": "a", "kind": "trainjobs"}}
    )
    not_served = ApiError(404)
    not_served.body = "404 page not found"
    for error, object_not_found in ((gone, True), (not_served, False)):
        call, _ = script(error)
        with pytest.raises(KubeApiError) as info:
            run(RetryPolicy(clock=FakeClock()), "Get TrainJob ns/a", call)
        assert info.value.object_not_found is object_not_found


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "spec.volumes[0].hostPath.path: Invalid value: \"/data/../etc\": must not contain '..'",
            'Create Pod ns/p: 422 Invalid: spec.volumes[0].hostPath.path: Invalid value: "/data/../etc": '
            "must not contain '..'.",
        ),
        ("the server is shutting down.", "Create Pod ns/p: 422 Invalid: the server is shutting down."),
    ],
    ids=["dots-inside-kept", "one-final-period"],
)
def test_the_servers_message_is_kept_as_it_is(message, expected):
    """Its ``..`` are the server's (a path, a range), not a doubled period to tidy away."""
    assert str(KubeApiError("Create Pod ns/p", 422, "Invalid", message)) == expected

"""The one retry policy of the Kubernetes clients, on a fake clock (no real sleeping)."""

from __future__ import annotations

import asyncio
import json

import pytest
from airflow_provider_sft.core.kube import KubeApiError, RetryPolicy


class FakeClock:
    def __init__(self):
        self.slept: list[float] = []

    def now(self):  # pragma: no cover - unused here
        raise NotImplementedError

    def monotonic(self):
        return sum(self.slept)

    def sleep(self, seconds):
        self.slept.append(seconds)

    async def asleep(self, seconds):
        self.slept.append(seconds)


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

    def call():
        outcome = outcomes[len(calls)]
        calls.append(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return call, calls


def test_transient_errors_are_retried_with_backoff_and_retry_after():
    clock = FakeClock()
    call, _calls = script(
        ApiError(503), ApiError(429, headers={"Retry-After": "7"}), ConnectionResetError(), "ok"
    )
    assert RetryPolicy(clock=clock, base_seconds=0.5).call("Get TrainJob ns/a", call) == "ok"
    assert clock.slept == [0.5, 7.0, 2.0]  # exponential, except where the server said when


def test_client_errors_are_not_retried_and_carry_the_server_message():
    clock = FakeClock()
    call, calls = script(
        ApiError(422, 'TrainJob.trainer.kubeflow.org "x" is invalid: spec.trainer.numNodes: Invalid value: 0')
    )
    with pytest.raises(
        KubeApiError, match=r"Create TrainJob ns/x: 422 Unprocessable Entity: .*spec.trainer.numNodes"
    ) as info:
        RetryPolicy(clock=clock).call("Create TrainJob ns/x", call)
    assert info.value.status == 422 and len(calls) == 1 and clock.slept == []


def test_forbidden_names_the_permissions_to_grant():
    call, _ = script(ApiError(403, "trainjobs is forbidden"))
    with pytest.raises(KubeApiError, match="Grant the Airflow service account"):
        RetryPolicy(clock=FakeClock()).call("List TrainJobs in ns", call)


def test_retries_run_out():
    clock = FakeClock()
    call, calls = script(*[ApiError(503)] * 3)
    with pytest.raises(KubeApiError, match="503"):
        RetryPolicy(clock=clock, attempts=3).call("Get TrainJob ns/a", call)
    assert len(calls) == 3 and len(clock.slept) == 2


def test_async_retries_use_the_same_policy():
    clock = FakeClock()
    outcomes = [ApiError(500), "ok"]

    async def call():
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    assert asyncio.run(RetryPolicy(clock=clock).acall("Get TrainJob ns/a", call)) == "ok"
    assert clock.slept == [0.5]

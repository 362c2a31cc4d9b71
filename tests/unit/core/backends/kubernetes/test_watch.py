"""The one wait: ``WatchCursor``'s decisions and the driver, on a fake clock and a scripted client.

No server and no real time: the clock advances only when the driver sleeps or a
scripted watch "lasts" its window.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from airflow_provider_sft.core.backends.kubernetes.kinds import TRAINJOB
from airflow_provider_sft.core.backends.kubernetes.retry import KubeApiError
from airflow_provider_sft.core.backends.kubernetes.status import JobPhase, JobState
from airflow_provider_sft.core.backends.kubernetes.watch import (
    MAX_OUTAGE_SECONDS,
    PENDING_POLL_SECONDS,
    WATCH_WINDOW_SECONDS,
    WatchCursor,
    follow_job,
)
from tests.fakes.clock import FakeClock


def job(rv="1", *, ready=0, active=0, conditions=(), suspend=False):
    return {
        "metadata": {"name": "j", "resourceVersion": rv},
        "spec": {"suspend": suspend},
        "status": {
            "conditions": [
                {"type": t, "status": "True", "reason": r, "message": m} for t, r, m in conditions
            ],
            "jobsStatus": [{"name": "node", "ready": ready, "active": active}],
        },
    }


def api_error(status, message="", name=None):
    error = Exception(status)
    error.status, error.reason = (
        status,
        {403: "Forbidden", 503: "Service Unavailable", 404: "Not Found"}.get(status, ""),
    )
    error.body = json.dumps({"kind": "Status", "message": message, "details": {"name": name} if name else {}})
    return error


# --- the cursor alone ------------------------------------------------------------------


def test_pending_pods_are_not_running():
    cursor = WatchCursor("ns", "j", started_at=0)
    cursor.observe(job(active=1))
    assert cursor.last.phase is JobPhase.PENDING and not cursor.started
    cursor.observe(job(active=1, ready=1))
    assert cursor.last.phase is JobPhase.RUNNING and cursor.started


def test_states_are_reported_once_each():
    seen = []
    cursor = WatchCursor("ns", "j", started_at=0, on_state=seen.append)
    for obj in (job(), job("2"), job("3", suspend=True), job("4", ready=1), job("5", ready=1)):
        cursor.observe(obj)
    assert [s.phase for s in seen] == [JobPhase.PENDING, JobPhase.SUSPENDED, JobPhase.RUNNING]


SUSPENDED = ("Suspended", "Suspended", "TrainJob is suspended")  # the Trainer v2.3.0 condition


def test_a_job_suspended_after_it_ran_is_preempted_and_its_readmission_reported():
    seen = []
    cursor = WatchCursor("ns", "j", started_at=0, start_timeout_seconds=20, on_state=seen.append)
    cursor.observe(job("1", ready=1))
    cursor.observe(job("2", suspend=True, conditions=[SUSPENDED]))
    cursor.observe(job("3", suspend=True, conditions=[SUSPENDED]))  # reported once
    cursor.observe(job("3", suspend=True))  # whatever the wording of what follows
    assert cursor.last == JobState(JobPhase.PREEMPTED, "Suspended", "TrainJob is suspended")
    assert cursor.timed_out(10_000) is None and cursor.next_deadline() is None  # no start timeout
    assert cursor.window(0) == WATCH_WINDOW_SECONDS  # nothing to poll while it waits
    cursor.observe(job("4", active=1))  # resumed: pods created, not ready yet
    cursor.observe(job("5", ready=1))
    assert [(s.phase, s.readmitted) for s in seen] == [
        (JobPhase.RUNNING, False),
        (JobPhase.PREEMPTED, False),
        (JobPhase.PENDING, True),
        (JobPhase.RUNNING, False),
    ]
    assert seen[1].line("TrainJob j") == (
        "preempted, waiting for readmission: TrainJob j was suspended after it started (Suspended: "
        "TrainJob is suspended); its pods are stopped. Not a failure, and no start timeout applies "
        "while it waits"
    )
    readmitted = "readmitted: the pods start again; they resume from the state saved at preemption"
    assert seen[2].line("TrainJob j").startswith(f"{readmitted} (TrainJob j: pending: PodsNotReady")
    assert seen[3].line("TrainJob j") == "TrainJob j: running"


def test_a_job_suspended_before_it_ran_is_queued_and_held_to_its_start_timeout():
    seen = []
    cursor = WatchCursor("ns", "j", started_at=0, start_timeout_seconds=20, on_state=seen.append)
    cursor.observe(job("1", suspend=True, conditions=[SUSPENDED]))
    assert seen[-1].phase is JobPhase.SUSPENDED and seen[-1].line("TrainJob j") == (
        "TrainJob j: suspended: Suspended: TrainJob is suspended"
    )
    assert cursor.timed_out(20) == "start"


def test_a_pytorchjob_that_ran_says_so_in_its_conditions():
    """Training Operator v1.9: suspending a running job sets Running False (PyTorchJobSuspended),
    so a wait that never saw it run (a restarted triggerer) still knows it was preempted."""
    message = "PyTorchJob j is suspended."
    preempted = {
        "kind": "PyTorchJob",
        "spec": {"runPolicy": {"suspend": True}},
        "status": {
            "conditions": [
                {"type": "Created", "status": "True", "reason": "PyTorchJobCreated"},
                {"type": "Running", "status": "False", "reason": "PyTorchJobSuspended", "message": message},
                {"type": "Suspended", "status": "True", "reason": "PyTorchJobSuspended", "message": message},
            ]
        },
    }
    cursor = WatchCursor("ns", "j", started_at=0, kind="PyTorchJob", start_timeout_seconds=20)
    cursor.observe(preempted)
    assert cursor.last == JobState(JobPhase.PREEMPTED, "PyTorchJobSuspended", message)
    assert cursor.timed_out(10_000) is None
    queued = {**preempted, "status": {"conditions": [preempted["status"]["conditions"][2]]}}
    assert WatchCursor("ns", "j", started_at=0, kind="PyTorchJob").observe(queued) is None
    fresh = WatchCursor("ns", "j", started_at=0, kind="PyTorchJob", start_timeout_seconds=20)
    fresh.observe(queued)
    assert fresh.last.phase is JobPhase.SUSPENDED and fresh.timed_out(20) == "start"


def test_watch_events():
    cursor = WatchCursor("ns", "j", started_at=0)
    assert cursor.event("BOOKMARK", {"metadata": {"resourceVersion": "9"}}) is None
    assert cursor.resource_version == "9"
    assert cursor.event("ERROR", {"code": 410}) is None and cursor.resource_version is None
    assert cursor.event("DELETED", job()).reason == "NotFound"
    done = cursor.event("MODIFIED", job(conditions=[("Complete", "JobsCompleted", "")]))
    assert done == JobState(JobPhase.SUCCEEDED, "JobsCompleted", "")
    with pytest.raises(KubeApiError, match="Watch TrainJob ns/j: 500"):
        cursor.event("ERROR", {"code": 500, "reason": "InternalError", "message": "boom"})


def test_deadlines_on_the_injected_clock():
    cursor = WatchCursor("ns", "j", started_at=100, timeout_seconds=50, start_timeout_seconds=20)
    assert cursor.timed_out(119) is None
    assert cursor.timed_out(120) == "start"  # never started
    cursor.observe(job(ready=1))
    assert cursor.timed_out(140) is None  # started: the start timeout no longer applies
    assert cursor.timed_out(150) == "run"


def test_windows_end_at_the_next_deadline_or_look_at_pending_pods():
    cursor = WatchCursor("ns", "j", started_at=0, timeout_seconds=1000, start_timeout_seconds=500)
    cursor.checked_pending(0, ())
    assert cursor.window(0) == PENDING_POLL_SECONDS  # not started: look again soon
    cursor.observe(job(ready=1))
    assert cursor.window(0) == WATCH_WINDOW_SECONDS  # running: a long watch
    assert cursor.window(990.2) == 10  # never past the deadline (rounded up)


def test_failures_back_off_ride_out_outages_and_raise_the_rest():
    cursor = WatchCursor("ns", "j", started_at=0)
    cursor.resource_version = "5"
    assert 0 <= cursor.failed_call(ConnectionRefusedError(), now=0) <= 1.0  # jittered, bound doubling
    assert cursor.resource_version is None  # after an outage, read again before watching
    assert 0 <= cursor.failed_call(api_error(503), now=1) <= 2.0
    assert 0 <= cursor.failed_call(api_error(404, "404 page not found"), now=3) <= 4.0  # CRD re-registering
    with pytest.raises(KubeApiError, match="503"):
        cursor.failed_call(api_error(503), now=MAX_OUTAGE_SECONDS + 1)
    cursor.succeeded_call()
    assert cursor.failed_call(api_error(503), now=MAX_OUTAGE_SECONDS + 2) <= 1.0  # a new outage
    with pytest.raises(KubeApiError, match="403 Forbidden") as info:
        cursor.failed_call(api_error(403, "trainjobs is forbidden"), now=0)
    assert "deploy/rbac.yaml" in str(info.value)
    with pytest.raises(KubeApiError):
        cursor.failed_call(api_error(404, "not found", name="j"), now=0)  # our object: not an outage
    with pytest.raises(KeyError):
        cursor.failed_call(KeyError("type"), now=0)  # a bug is never ridden out as an outage


# --- the driver, with a scripted client --------------------------------------------------


class ScriptedClient:
    """``get_job`` answers from ``gets``; each watch yields one list of ``watches`` (or raises)."""

    def __init__(self, clock, gets, watches, pods=(), events=()):
        self.clock, self.gets, self.watches = clock, list(gets), list(watches)
        self.pods, self.events = list(pods), list(events)
        self.calls: list[str] = []

    async def get_job(self, resource, namespace, name):
        self.calls.append("get")
        outcome = self.gets.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def watch_job(self, resource, namespace, name, resource_version, timeout_seconds, idle_timeout):
        self.calls.append(f"watch {resource_version} {timeout_seconds}")
        events = self.watches.pop(0) if self.watches else []
        if isinstance(events, BaseException):
            raise events
        for event in events:
            yield event
        self.clock.advance(timeout_seconds)  # a watch that saw nothing more lasted its window

    async def list_job_pods(self, resource, namespace, name):
        self.calls.append("pods")
        return self.pods

    async def list_events(self, namespace, name):
        self.calls.append(f"events {name}")
        return [e for e in self.events if e["involvedObject"]["name"] == name]


def follow(client, clock, **kwargs):
    return asyncio.run(follow_job(client, TRAINJOB, "ns", "j", clock=clock, **kwargs))


def test_an_outage_is_ridden_out_then_the_job_read_again():
    clock = FakeClock(1000.0)
    client = ScriptedClient(
        clock,
        gets=[
            job("1", ready=1),
            api_error(404, "404 page not found"),
            job("7", conditions=[("Complete", "Done", "")]),
        ],
        watches=[ConnectionResetError()],
    )
    result = follow(client, clock)
    assert result.state.phase is JobPhase.SUCCEEDED
    assert client.calls == ["get", "watch 1 300", "get", "get"]
    assert len(clock.slept) == 2 and 0 <= clock.slept[0] <= 1.0 and 0 <= clock.slept[1] <= 2.0


GONE_410 = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}


def test_a_watch_the_server_keeps_ending_at_once_is_reopened_with_jittered_backoff():
    """After an API-server restart, a watch may end at once again and again (410 for a version the
    fresh server does not have yet, a stream closed as it comes up). Each round read the job and
    re-opened the watch without a pause: ~42k requests in 180 s for 3 waiters. Now the first
    re-read is immediate, then each waits a random time up to a doubling bound."""
    clock = FakeClock(1000.0)
    rounds = 20
    client = ScriptedClient(
        clock,
        gets=[job(str(i), ready=1) for i in range(rounds)]
        + [job("99", conditions=[("Complete", "Done", "")])],
        watches=[[GONE_410] for _ in range(rounds)],
    )
    result = follow(client, clock)
    assert result.state.phase is JobPhase.SUCCEEDED
    assert len(clock.slept) == rounds
    assert clock.slept[0] == 0.0  # the first 410 is read again at once, as informers do
    assert all(0 <= delay <= 30.0 for delay in clock.slept)
    assert sum(clock.slept) > 60  # ~225 s expected over 20 rounds: never a tight loop
    assert len(set(clock.slept[1:])) == rounds - 1  # jittered: waiters do not reconnect in step


def test_a_403_ends_the_wait_at_once():
    clock = FakeClock(1000.0)
    client = ScriptedClient(clock, gets=[job("1", ready=1)], watches=[api_error(403, "forbidden")])
    with pytest.raises(KubeApiError, match="403"):
        follow(client, clock)
    assert clock.slept == []


def test_a_pending_job_is_described_and_its_start_timeout_ends_the_wait():
    clock = FakeClock(1000.0)
    pod = {"metadata": {"name": "j-node-0-0-x"}, "status": {"phase": "Pending"}}
    event = {
        "type": "Warning",
        "reason": "FailedScheduling",
        "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
        "involvedObject": {"kind": "Pod", "name": "j-node-0-0-x"},
        "lastTimestamp": "2026-12-01T10:00:00Z",
    }
    notes = []
    client = ScriptedClient(clock, gets=[job("1", active=1)], watches=[], pods=[pod], events=[event])
    result = follow(client, clock, timeout_seconds=3600, start_timeout_seconds=70, on_note=notes.append)
    assert result.timeout == "start"
    assert result.pending == (
        "pod j-node-0-0-x: FailedScheduling: 0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
    )
    assert notes == [f"TrainJob j not running yet: {result.pending[0]}"]  # reported once, not every look
    assert [c for c in client.calls if c.startswith("watch")] == ["watch 1 30", "watch 1 30", "watch 1 10"]
    assert clock.monotonic() == 1070.0


def test_the_run_deadline_ends_a_wait_on_a_running_job():
    clock = FakeClock(1000.0)
    client = ScriptedClient(clock, gets=[job("1", ready=1)], watches=[])
    result = follow(client, clock, timeout_seconds=700)
    assert result.timeout == "run" and result.state.phase is JobPhase.RUNNING
    assert [c for c in client.calls if c.startswith("watch")] == ["watch 1 300", "watch 1 300", "watch 1 100"]


def test_a_preempted_job_is_waited_for_past_its_start_timeout_and_succeeds():
    clock = FakeClock(1000.0)
    seen = []
    client = ScriptedClient(
        clock,
        gets=[job("1", ready=1)],
        watches=[
            [{"type": "MODIFIED", "object": job("2", suspend=True, conditions=[SUSPENDED])}],
            [],  # preempted for a whole window, and another: longer than the start timeout
            [],
            [
                {"type": "MODIFIED", "object": job("3", active=1)},
                {"type": "MODIFIED", "object": job("4", ready=1)},
                {"type": "MODIFIED", "object": job("5", conditions=[("Complete", "JobsCompleted", "")])},
            ],
        ],
    )
    result = follow(client, clock, timeout_seconds=3600, start_timeout_seconds=60, on_state=seen.append)
    assert result.timeout is None and result.state.phase is JobPhase.SUCCEEDED
    assert [s.phase for s in seen] == [
        JobPhase.RUNNING,
        JobPhase.PREEMPTED,
        JobPhase.PENDING,
        JobPhase.RUNNING,
        JobPhase.SUCCEEDED,
    ]
    assert clock.monotonic() - 1000.0 > 60  # waited past the start timeout while preempted
    assert "pods" not in client.calls  # a preempted job's (deleted) pods are not polled


def test_the_run_deadline_still_ends_a_wait_for_readmission():
    clock = FakeClock(1000.0)
    client = ScriptedClient(
        clock,
        gets=[job("1", ready=1)],
        watches=[[{"type": "MODIFIED", "object": job("2", suspend=True, conditions=[SUSPENDED])}]],
    )
    result = follow(client, clock, timeout_seconds=700, start_timeout_seconds=60)
    assert result.timeout == "run" and result.state.phase is JobPhase.PREEMPTED
    assert clock.monotonic() == 1700.0
    from airflow_provider_sft.core.backends.kubernetes import result_of

    assert result_of("ns", "j", result, start_timeout_seconds=60).message == (
        "TrainJob ns/j did not finish in time, it was preempted and still waits for readmission"
    )


class FrozenClient(ScriptedClient):
    """A server that stops answering once the job was read: the watch hangs, as on a SIGSTOPped peer."""

    def __init__(self, clock, first):
        super().__init__(clock, gets=[first], watches=[])
        self.cancelled = False

    async def watch_job(self, resource, namespace, name, resource_version, timeout_seconds, idle_timeout):
        self.calls.append("watch")
        try:
            await asyncio.Event().wait()  # never answers, never times out by itself
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        yield {}


@pytest.mark.parametrize(
    ("first", "deadlines", "timeout"),
    [
        (job("1", ready=1), {"timeout_seconds": 0.2}, "run"),
        (job("1", active=1), {"timeout_seconds": 3600, "start_timeout_seconds": 0.2}, "start"),
    ],
    ids=["run", "start"],
)
def test_a_deadline_ends_a_call_that_hangs(monkeypatch, first, deadlines, timeout):
    from airflow_provider_sft.core.backends.kubernetes import watch

    monkeypatch.setattr(watch, "DEADLINE_GRACE_SECONDS", 0.0)
    clock = FakeClock(1000.0)  # it never moves: only the bound on the call in flight ends this wait
    client = FrozenClient(clock, first)
    result = follow(client, clock, **deadlines)
    assert result.timeout == timeout
    assert client.calls[-1] == "watch" and client.cancelled  # the hung call was given up, not left

"""Nodes other than node 0 wait for its data-ready marker: on the injected clock, never real time."""

from __future__ import annotations

import pytest

from airflow_provider_sft.core.errors import TrainingFailedError
from airflow_provider_sft.core.training.nodes import mark_data_ready, wait_for_data
from tests.fakes.clock import FakeClock

REPORT = {"records": 3}


class MarkerAfterSleeps(FakeClock):
    """Node 0 marks the data ready for ``attempt`` after the waiter slept ``sleeps`` times."""

    def __init__(self, processed_dir, attempt, sleeps):
        super().__init__()
        self.processed_dir, self.attempt, self.sleeps = processed_dir, attempt, sleeps

    def sleep(self, seconds):
        super().sleep(seconds)
        if len(self.slept) == self.sleeps:
            mark_data_ready(self.processed_dir, self.attempt, REPORT)


def test_the_marker_of_this_attempt_ends_the_wait_with_node_0s_report(tmp_path):
    clock = MarkerAfterSleeps(tmp_path, "a2", sleeps=3)
    report = wait_for_data(tmp_path, "a2", timeout=60, poll=2, log=lambda _line: None, clock=clock)
    assert report == REPORT
    assert clock.slept == [2, 2, 2]  # polled on the injected clock, not in real time


def test_a_marker_left_by_an_earlier_attempt_does_not_count_and_the_wait_times_out(tmp_path):
    mark_data_ready(tmp_path, "a1", REPORT)
    clock = FakeClock()
    with pytest.raises(TrainingFailedError, match=r"within 5s \(no .*\.data-ready\.json for attempt a2\)"):
        wait_for_data(tmp_path, "a2", timeout=5, poll=1, log=lambda _line: None, clock=clock)
    assert clock.slept == [1, 1, 1, 1, 1] and clock.monotonic() == 5

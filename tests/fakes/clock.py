"""The one fake ``Clock`` (``airflow_provider_sft.core.clock.Clock``) the tests share.

Time moves only when the code under test sleeps, so waits, backoffs and deadlines run
instantly and every sleep is recorded for the test to assert on.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


class FakeClock:
    """A clock that advances by exactly what is slept on it, sync or async.

    :param start: the monotonic reading before any sleep.
    :param wall_start: what ``now()`` reads before any sleep (deadlines given as
        wall-clock times are set relative to it).
    """

    def __init__(self, start: float = 0.0, *, wall_start: datetime = EPOCH) -> None:
        self.start, self.wall_start = start, wall_start
        self._now = start
        self.slept: list[float] = []

    def advance(self, seconds: float) -> None:
        """Time passing without a sleep (e.g. a call that lasted ``seconds``)."""
        self._now += seconds

    def now(self) -> datetime:
        return self.wall_start + timedelta(seconds=self._now - self.start)

    def monotonic(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)

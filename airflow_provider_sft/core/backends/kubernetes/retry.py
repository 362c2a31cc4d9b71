"""One retry policy for every Kubernetes API call, on tenacity.

Modelled on the cncf provider's ``generic_api_retry``: only transient failures are
retried (429 and 5xx answers, connection errors, request timeouts), ``Retry-After``
is honoured, and each sleep is logged. Everything else becomes a :class:`KubeApiError`
at once, carrying the server's status, reason and message but never the request
body (it may hold a Secret). A 403 is never retried: its message names the RBAC
rules to grant (``deploy/rbac.yaml``).

Sleeping goes through the injected clock, so tests of backoff need no real time.

A watch is not one call but a loop of them (read, watch, re-read): :class:`Reconnect` paces that
loop. After an API-server restart every waiter of every triggerer reconnects at once; its
jittered exponential backoff (tenacity's ``wait_random_exponential``, "full jitter") spreads
them out, and a watch that the server keeps ending at once is re-opened ever more slowly
instead of in a tight loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import tenacity

from airflow_provider_sft.core.clock import SYSTEM_CLOCK, Clock
from airflow_provider_sft.core.errors import SFTError

T = TypeVar("T")
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
RBAC_HINT = (
    "Grant the Airflow service account the provider's Role (deploy/rbac.yaml in the provider's "
    "repository: trainjobs, trainingruntimes, clustertrainingruntimes, pods, pods/log, events, secrets)."
)


class KubeApiError(SFTError):
    """A Kubernetes API call failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, action: str, status: int, reason: str, message: str, *, details: dict | None = None):
        self.action, self.status, self.reason, self.server_message = action, status, reason, message
        self.details = details or {}
        hint = f" {RBAC_HINT}" if status == 403 else ""
        end = "" if message.endswith(".") else "."  # the server's message as it is, one sentence
        super().__init__(f"{action}: {status} {reason}: {message}{end}{hint}")

    @property
    def object_not_found(self) -> bool:
        """A 404 about one named object (it does not exist), not an API that is not served.

        While an API server restarts, a custom resource's URL answers a bare 404 page
        until its CRD is registered again: that is not "the TrainJob is gone".
        """
        return self.status == 404 and bool(self.details.get("name"))


def server_message(exc: BaseException) -> tuple[int, str, str, dict]:
    """(status, reason, message, details) of an ApiException-shaped error (status 0: no answer)."""
    status = int(getattr(exc, "status", 0) or 0)
    reason = str(getattr(exc, "reason", "") or type(exc).__name__)
    body = getattr(exc, "body", None)
    message = ""
    details: dict[str, Any] = {}
    if body:
        try:
            parsed = json.loads(body)
            message, details = parsed.get("message", ""), parsed.get("details") or {}
        except (ValueError, AttributeError):
            pass
    if not status and not message:
        message = str(exc) or type(exc).__name__
    return status, reason, message or reason, details


def as_api_error(action: str, exc: BaseException) -> KubeApiError:
    if isinstance(exc, KubeApiError):
        return exc
    status, reason, message, details = server_message(exc)
    return KubeApiError(action, status, reason, message, details=details)


def watch_error(action: str, obj: Any) -> KubeApiError | None:
    """The error a watch's ``ERROR`` event carries (a Status object), or None for a 410: the version
    the watch resumed from was compacted, and the watcher reads again rather than fails."""
    code = int(obj.get("code", 0)) if isinstance(obj, dict) else 0
    if code == 410:
        return None
    obj = obj if isinstance(obj, dict) else {}
    return KubeApiError(action, code, obj.get("reason", ""), obj.get("message", ""))


def is_transient(exc: BaseException) -> bool:
    """Worth another try: a 429/5xx answer, no answer at all, or a request that timed out."""
    if isinstance(exc, KubeApiError):
        return exc.status in TRANSIENT_STATUS or exc.status == 0
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status:
        return status in TRANSIENT_STATUS
    if isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError):
        return True
    return type(exc).__module__.startswith(("aiohttp", "urllib3"))


RECONNECT_BASE_SECONDS = 1.0  # the first backed-off reconnect waits up to this long
RECONNECT_MAX_SECONDS = 30.0  # and none longer than this


class Reconnect:
    """How long to wait before the next reconnect of a watch loop: none the first time (a 410 is
    re-read at once, as Kubernetes' informers do), then a random time up to a bound that doubles
    with each reconnect in a row (``RECONNECT_BASE_SECONDS`` .. ``RECONNECT_MAX_SECONDS``).

    ``immediate_first=False`` backs off from the first one (after a failed call: the server is down).
    """

    def __init__(
        self, *, base_seconds: float = RECONNECT_BASE_SECONDS, max_seconds: float = RECONNECT_MAX_SECONDS
    ) -> None:
        self._wait = tenacity.wait_random_exponential(multiplier=base_seconds, max=max_seconds)
        self.in_a_row = 0

    def next_delay(self, *, immediate_first: bool = True) -> float:
        self.in_a_row += 1
        backoffs = self.in_a_row - 1 if immediate_first else self.in_a_row
        if backoffs == 0:
            return 0.0
        # the wait reads only the attempt number of the state tenacity would pass it
        return float(self._wait(cast("tenacity.RetryCallState", SimpleNamespace(attempt_number=backoffs))))

    def reset(self) -> None:
        """The loop got somewhere (a change, or a watch that lasted its window): start over."""
        self.in_a_row = 0


def retry_after_seconds(exc: BaseException) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    try:
        return float(headers.get("Retry-After", ""))  # no header: float("") fails as a bad one does
    except (TypeError, ValueError):
        return None


class RetryPolicy:
    """Exponential backoff for transient failures; ``Retry-After`` wins when the server sends it."""

    def __init__(
        self,
        *,
        attempts: int = 5,
        base_seconds: float = 0.5,
        max_seconds: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
        log: Callable[[str], None] | None = None,
    ):
        self.attempts, self.base_seconds, self.max_seconds = attempts, base_seconds, max_seconds
        self.clock, self.log = clock, log

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        backoff = self.base_seconds * 2 ** (state.attempt_number - 1)
        return min(self.max_seconds, (exc and retry_after_seconds(exc)) or backoff)

    def _before_sleep(self, action: str) -> Callable[[tenacity.RetryCallState], None]:
        def log(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            if self.log and exc is not None and state.next_action is not None:
                _, reason, _, _ = server_message(exc)
                self.log(
                    f"{action}: transient error ({reason}), retry {state.attempt_number} "
                    f"in {state.next_action.sleep:.1f}s"
                )

        return log

    async def call(self, action: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` (one API request) under the policy; failures become :class:`KubeApiError`."""
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(is_transient),
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=self._wait,
            sleep=self.clock.asleep,
            before_sleep=self._before_sleep(action),
            reraise=True,
        )

        async def attempt() -> T:  # a coroutine function: tenacity awaits only those
            return await fn()

        try:
            return await retrying(attempt)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not (is_transient(exc) or getattr(exc, "status", None)):
                raise  # not an API failure (a bug, a bad certificate file): as it is
            raise as_api_error(action, exc) from exc

"""The pod pushes its progress to the TrainJob's ``status.trainerStatus`` (KEP-2779), for Airflow to read.

With the Trainer's ``TrainJobStatus`` feature gate on (alpha, off by default; v2.2+), the controller
injects three variables into the trainer container (``pkg/runtime/framework/plugins/trainjobstatus``):
the status server's URL for this TrainJob, and the paths of the server's CA certificate and of a
service-account token whose audience is this TrainJob's status endpoint, both in a projected volume.
Nobody scrapes: the pod POSTs ``{"trainerStatus": {...}}`` there and the server applies it to the
TrainJob's status subresource (``pkg/statusserver/server.go``), where the CRD's schema checks it.

Without ``KUBEFLOW_TRAINER_SERVER_URL`` there is nothing to push to and nothing happens: a cluster
without the gate, a PyTorchJob, the local backend. Otherwise, on node 0 only:

* at most one request every :data:`MIN_INTERVAL_SECONDS` (the guide's rule for clients); the
  latest snapshot wins, earlier ones are never queued;
* from a background thread, so a slow or dead server never delays a training step;
* the token is read from its file at each push: the kubelet rotates it before it expires;
* a failure is logged once per kind (no token, TLS, refused, unreachable, ...), without the
  token or any training data, and never stops the training;
* the end pushes once more, whatever the interval (as transformers' ``KubeflowCallback`` does):
  100% and no time left when the training completed, else the last snapshot.

This module travels to the pod (``program.CARRIED``): the standard library only.
"""

from __future__ import annotations

import json
import math
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from airflow_provider_sft.core.pod.protocol import WARNING_MARK
from airflow_provider_sft.core.training.progress import ProgressSnapshot

Logger = Callable[[str], None]
URL_ENV = "KUBEFLOW_TRAINER_SERVER_URL"
CA_CERT_ENV = "KUBEFLOW_TRAINER_SERVER_CA_CERT"
TOKEN_ENV = "KUBEFLOW_TRAINER_SERVER_TOKEN"
MIN_INTERVAL_SECONDS = 5.0  # docs/user-guides/trainjob-progress.md: at most one request every 5 s
TIMEOUT_SECONDS = 10.0  # one request, connect to answer
_INT32_MAX = 2**31 - 1  # the CRD's int32 fields


def _value(value: int | float) -> str:
    """A metric's value as the CRD wants it, a string: ints in decimal, floats with 6 significant digits."""
    return str(value) if isinstance(value, int) else format(value, ".6g")


def trainer_status(snapshot: ProgressSnapshot | None, *, completed: bool = False) -> dict[str, Any]:
    """The ``trainerStatus`` of a snapshot, in the v2.3.0 CRD's terms (what is not known is left out).

    ``progressPercentage`` is the floor of the samples seen over the whole run's samples;
    ``completed`` (the training ended well) makes it 100 with no time left.
    """
    status: dict[str, Any] = {}
    if completed:
        status.update(progressPercentage=100, estimatedRemainingSeconds=0)
    elif snapshot is not None:
        if snapshot.percent is not None:
            status["progressPercentage"] = snapshot.percent
        if snapshot.eta_seconds is not None and math.isfinite(snapshot.eta_seconds):
            status["estimatedRemainingSeconds"] = min(_INT32_MAX, max(0, round(snapshot.eta_seconds)))
    if snapshot is not None:
        known = {
            "step": snapshot.step,
            "total_steps": snapshot.total_steps,
            "epoch": snapshot.epoch + 1,
            "num_epochs": snapshot.num_epochs,
            "loss": snapshot.loss,
            "loss_smoothed": snapshot.loss_smoothed,
            "learning_rate": snapshot.lr,
            "tokens_per_second": snapshot.tokens_per_second,
            "samples_per_second": snapshot.samples_per_second,
            "samples_seen": snapshot.samples_seen,
            "validation_loss": snapshot.validation_loss,
        }
        status["metrics"] = [
            {"name": name, "value": _value(value)} for name, value in known.items() if value is not None
        ]
    moment = snapshot.at if snapshot is not None else time.time()
    status["lastUpdatedTime"] = datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return status


class TrainerStatusReporter:
    """Pushes the latest snapshot to the status server from a background thread (see the module).

    A context manager: the exit stops the thread and makes the final push, ``completed`` when
    the block ended without an exception.
    """

    def __init__(
        self,
        url: str,
        *,
        ca_file: str | None,
        token_file: str | None,
        log: Logger,
        interval: float = MIN_INTERVAL_SECONDS,
        timeout: float = TIMEOUT_SECONDS,
    ):
        self.url, self.ca_file, self.token_file = url, ca_file, token_file
        self.log, self.interval, self.timeout = log, interval, timeout
        self._latest: ProgressSnapshot | None = None
        self._pending: ProgressSnapshot | None = None  # reported, not pushed yet
        self._next_push = 0.0  # monotonic time the next request may go
        self._failures: set[str] = set()  # the kinds of failure already logged
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sft-trainer-status")

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, log: Logger) -> TrainerStatusReporter | None:
        """The reporter the controller asked for by injecting its variables; None without them."""
        url = env.get(URL_ENV)
        if not url:
            return None
        return cls(url, ca_file=env.get(CA_CERT_ENV), token_file=env.get(TOKEN_ENV), log=log)

    def __enter__(self) -> TrainerStatusReporter:
        self.log(f"reporting progress to the TrainJob's status at {self.url}")
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(completed=exc_type is None)

    def report(self, snapshot: ProgressSnapshot) -> None:
        """Take the newest snapshot; the thread pushes it when the interval allows. Never blocks."""
        with self._lock:
            self._latest = self._pending = snapshot
        self._wake.set()

    def close(self, *, completed: bool) -> None:
        """Stop the thread (waiting at most for its request in flight) and push the end."""
        self._closed.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout + 1)
        with self._lock:
            snapshot = self._latest
        self._push(trainer_status(snapshot, completed=completed))

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._closed.is_set():
                return
            delay = self._next_push - time.monotonic()
            if delay > 0 and self._closed.wait(delay):
                return
            with self._lock:
                snapshot, self._pending = self._pending, None
                self._wake.clear()
            if snapshot is not None:
                self._next_push = time.monotonic() + self.interval
                self._push(trainer_status(snapshot))

    def _push(self, status: dict[str, Any]) -> None:
        """One POST; what fails is logged once per kind and otherwise ignored."""
        try:
            token = self._token()
            context = self._tls()
            if token is None or context is None:
                return
            request = urllib.request.Request(
                self.url,
                data=json.dumps({"trainerStatus": status}).encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                method="POST",
            )
            # a Service inside the cluster: never through the pod's HTTP(S)_PROXY, if it has one
            opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
            )
            with opener.open(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            self._failed(f"http-{exc.code}", f"the status server refused it: {exc.code} {_message(exc)}")
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, ssl.SSLError):
                self._failed(
                    "tls", f"TLS with the status server failed: {reason.reason or type(reason).__name__}"
                )
            else:
                self._failed("unreachable", f"the status server is unreachable: {_reason(reason)}")
        except Exception as exc:  # a progress report never stops a training
            self._failed(type(exc).__name__, type(exc).__name__)

    def _tls(self) -> ssl.SSLContext | None:
        """TLS verified with the CA the controller mounted (the system's CAs when it names none)."""
        try:
            return ssl.create_default_context(cafile=self.ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            self._failed("ca", f"cannot read the CA certificate {CA_CERT_ENV} names: {_reason(exc)}")
            return None

    def _token(self) -> str | None:
        """The service-account token, read anew at each push (the kubelet rotates it)."""
        try:
            with open(self.token_file or "", encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            self._failed("token", f"no token to authenticate with ({TOKEN_ENV}: {exc.strerror})")
            return None
        if not token:
            self._failed("token", f"the token file {TOKEN_ENV} names is empty")
            return None
        return token

    def _failed(self, kind: str, message: str) -> None:
        if kind not in self._failures:
            self._failures.add(kind)
            self.log(
                f"{WARNING_MARK}cannot report progress to the TrainJob's status ({message}); training goes on"
            )


def _reason(reason: object) -> str:
    """Why a connection failed, in a few words (an OSError's text, never a request's content)."""
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return type(reason).__name__ if isinstance(reason, BaseException) else str(reason)


def _message(error: urllib.error.HTTPError) -> str:
    """The ``metav1.Status`` message of a refusal (the CRD's reason for a 422), at most 300 characters."""
    try:
        body = json.loads(error.read() or b"{}")
    except ValueError:
        return error.reason or ""
    message = body.get("message") if isinstance(body, dict) else None
    return str(message)[:300] if message else (error.reason or "")

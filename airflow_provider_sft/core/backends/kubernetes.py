"""The Kubernetes backend: a training run as a Kubeflow Trainer TrainJob.

Submission is idempotent: the TrainJob name is the run name (deterministic per
dag/run/task/map index), so a retry or a restarted worker finds the job it
created and attaches to it. A job that already failed is deleted and submitted
again; a succeeded one is reused. Secrets go into a Secret owned by the TrainJob.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends.base import (
    BackendName,
    JobHandle,
    JobResult,
    JobStatus,
    LogSink,
    TrainingBackend,
)
from airflow_provider_sft.core.clock import SYSTEM_CLOCK, Clock
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.kube import KubeApiError, TrainJobClient
from airflow_provider_sft.core.run import TrainingRun
from airflow_provider_sft.core.trainjob import (
    JobPhase,
    JobState,
    KubernetesOptions,
    SpecGeneration,
    build_secret,
    build_trainjob,
    classify,
    detect_generation,
    label_value,
    owner_reference,
    secret_name,
)

log = logging.getLogger(__name__)
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|CREDENTIAL", re.IGNORECASE)


@dataclass(frozen=True)
class Credentials:
    """Secrets handed to the training pod through a Kubernetes Secret, never the spec."""

    hf_token: str | None = None
    oci_pull_secret: str | None = None

    def __repr__(self) -> str:  # never print the values
        return f"Credentials(hf_token={'***' if self.hf_token else None}, oci_pull_secret={'***' if self.oci_pull_secret else None})"


@dataclass
class KubernetesBackend(TrainingBackend):
    client: TrainJobClient
    options: KubernetesOptions = field(default_factory=KubernetesOptions)
    credentials: Credentials = field(default_factory=Credentials)
    run_labels: dict[str, str] = field(default_factory=dict)  # dag/task/run identifiers
    keep_failed: bool = False
    delete_on_success: bool = True
    clock: Clock = SYSTEM_CLOCK
    name = BackendName.KUBERNETES

    # --- contract ---------------------------------------------------------------------------

    def preflight(self, run: TrainingRun) -> None:
        secret_like = sorted(key for key in run.params.envs if _SECRET_NAME.search(key))
        if secret_like:
            raise InvalidParameterError(
                {
                    "envs": f"{', '.join(secret_like)} look(s) like a secret: envs become plain values in the "
                    "TrainJob spec. Pass the HuggingFace token with hf_conn_id (or HF_TOKEN in the worker's "
                    "environment), which goes through a Kubernetes Secret"
                }
            )
        if run.params.base_model.startswith("oci://"):
            raise InvalidParameterError(
                {
                    "base_model": "oci:// base models are not supported yet; use a HuggingFace id or a path on the PVC"
                }
            )

    def labels(self) -> dict[str, str]:
        base = {c.LABEL_MANAGED_BY: c.MANAGED_BY_VALUE, c.LABEL_COMPONENT: "sft-training"}
        return {**base, **{key: label_value(value) for key, value in self.run_labels.items()}}

    def generation(self) -> SpecGeneration:
        if self.options.spec_generation is not SpecGeneration.AUTO:
            return self.options.spec_generation
        return detect_generation(self.client.read_trainjob_crd())

    def manifest(self, run: TrainingRun, generation: SpecGeneration | None = None) -> dict[str, Any]:
        return build_trainjob(
            run,
            self.options,
            generation=generation or self.generation(),
            labels=self.labels(),
            has_hf_token=bool(self.credentials.hf_token),
            has_pull_secret=bool(self.credentials.oci_pull_secret),
        )

    def handle(self, run_name: str, output_dir: str) -> JobHandle:
        return JobHandle(BackendName.KUBERNETES, run_name, output_dir, {"namespace": self.options.namespace})

    def submit(self, run: TrainingRun) -> JobHandle:
        """Create the TrainJob, or attach to the one an earlier attempt created."""
        self.preflight(run)
        ns = self.options.namespace
        body = self.manifest(run)  # built (and checked) before anything is sent
        existing = self.client.get_trainjob(ns, run.name)
        if existing is not None:
            state = classify(existing)
            if state.phase is not JobPhase.FAILED:
                log.info("Attaching to existing TrainJob %s/%s (%s)", ns, run.name, state.phase.value)
                return self.handle(run.name, run.output_dir)
            log.info(
                "TrainJob %s/%s failed earlier (%s); deleting it to submit again", ns, run.name, state.reason
            )
            self._delete_and_wait(ns, run.name)
        secret = build_secret(
            run.name,
            ns,
            hf_token=self.credentials.hf_token,
            oci_pull_secret=self.credentials.oci_pull_secret,
            labels=self.labels(),
        )
        if secret is not None:
            self._put_secret(secret)
        try:
            created = self.client.create_trainjob(body)
        except KubeApiError as exc:
            if exc.status == 409:  # created by a concurrent or earlier attempt: attach
                return self.handle(run.name, run.output_dir)
            if secret is not None:
                self.client.delete_secret(ns, secret_name(run.name))
            raise
        if secret is not None:
            self.client.set_secret_owner(ns, secret_name(run.name), owner_reference(created))
        log.info("Created TrainJob %s/%s", ns, run.name)
        return self.handle(run.name, run.output_dir)

    def _put_secret(self, secret: dict[str, Any]) -> None:
        try:
            self.client.create_secret(secret)
        except KubeApiError as exc:
            if exc.status != 409:
                raise
            self.client.replace_secret(secret)

    def _delete_and_wait(self, namespace: str, name: str, timeout_seconds: float = 120) -> None:
        self.client.delete_trainjob(namespace, name)
        deadline = self.clock.monotonic() + timeout_seconds
        while self.client.get_trainjob(namespace, name) is not None:
            if self.clock.monotonic() >= deadline:
                raise KubeApiError(
                    f"Delete TrainJob {namespace}/{name}", 0, "Timeout", "still present after deletion"
                )
            self.clock.sleep(1.0)

    def state(self, handle: JobHandle) -> tuple[JobState, str | None]:
        """Current state and resourceVersion; a vanished job is a failure."""
        job = self.client.get_trainjob(handle.details["namespace"], handle.name)
        if job is None:
            return JobState(JobPhase.FAILED, "NotFound", "the TrainJob was deleted before it finished"), None
        return classify(job), job["metadata"].get("resourceVersion")

    def wait(self, handle: JobHandle, *, on_log: LogSink, timeout_seconds: float | None = None) -> JobResult:
        """Block (in the worker) until the TrainJob ends, following its status with a watch.

        Once the job runs, the rank-0 pod's log is streamed live into ``on_log``.
        """
        from airflow_provider_sft.core.waiting import wait_for_trainjob

        streamer = _LogStreamer(self.client, handle.details["namespace"], handle.name, on_log)

        def on_event(state: JobState) -> None:
            on_log(f"TrainJob {handle.name}: {state.phase.value} {state.reason} {state.message}".rstrip())
            if state.phase is JobPhase.RUNNING:
                streamer.start()

        state = wait_for_trainjob(
            self.client,
            handle.details["namespace"],
            handle.name,
            clock=self.clock,
            timeout_seconds=timeout_seconds,
            on_event=on_event,
        )
        streamed = streamer.finish()
        return self.finish(handle, state, on_log, copy_log=not streamed)

    def finish(
        self, handle: JobHandle, state: JobState | None, on_log: LogSink, *, copy_log: bool = True
    ) -> JobResult:
        """Copy the tail of the rank-0 pod log, clean up by policy, and turn the state into a result."""
        ns = handle.details["namespace"]
        if copy_log:
            self.copy_log_tail(handle, on_log)
        if state is None:
            self.cancel(handle)
            return JobResult(
                JobStatus.TIMED_OUT, f"TrainJob {ns}/{handle.name} did not finish in time; it was deleted"
            )
        if state.phase is JobPhase.SUCCEEDED:
            if self.delete_on_success:
                self.cancel(handle)  # the job and its Secret (with the token) are not needed any more
            return JobResult(JobStatus.SUCCEEDED, "training completed")
        if not self.keep_failed:
            self.client.delete_trainjob(ns, handle.name)
        detail = ": ".join(part for part in (state.reason, state.message) if part) or "no reason given"
        return JobResult(JobStatus.FAILED, f"TrainJob {ns}/{handle.name} failed: {detail}")

    def copy_log_tail(self, handle: JobHandle, on_log: LogSink, tail_lines: int = 200) -> None:
        ns = handle.details["namespace"]
        try:
            pod = self.client.node0_pod(ns, handle.name)
            if pod is None:
                return
            for line in self.client.read_log_tail(ns, pod, tail_lines).splitlines():
                on_log(line)
        except KubeApiError as exc:
            on_log(f"Could not read the training pod log: {exc}")

    def cancel(self, handle: JobHandle) -> None:
        ns = handle.details["namespace"]
        if self.client.delete_trainjob(ns, handle.name):
            log.info("Deleted TrainJob %s/%s", ns, handle.name)
        self.client.delete_secret(ns, secret_name(handle.name))


class _LogStreamer:
    """Follows the rank-0 pod's log in a thread while the worker waits on the TrainJob's status."""

    def __init__(self, client: TrainJobClient, namespace: str, job_name: str, on_log: LogSink):
        self.client, self.namespace, self.job_name, self.on_log = client, namespace, job_name, on_log
        self._thread: threading.Thread | None = None
        self.lines = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, daemon=True, name=f"log-{self.job_name}")
            self._thread.start()

    def _follow(self) -> None:
        try:
            pod = self.client.node0_pod(self.namespace, self.job_name)
            if pod is None:
                return
            for line in self.client.stream_log(self.namespace, pod):
                self.on_log(line)
                self.lines += 1
        except Exception as exc:  # the status watch decides the outcome; the log is best effort
            self.on_log(f"Log streaming stopped: {type(exc).__name__}")

    def finish(self, timeout_seconds: float = 10) -> bool:
        """Wait briefly for the last lines; True when the log was streamed."""
        if self._thread is not None:
            self._thread.join(timeout_seconds)
        return self.lines > 0

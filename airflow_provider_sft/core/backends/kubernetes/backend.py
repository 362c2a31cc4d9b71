"""The Kubernetes backend: a training run as a Kubeflow Trainer TrainJob or a Training Operator
v1 PyTorchJob (``job_kind``), with one lifecycle for both (:mod:`.kinds` says what differs).

Submission is idempotent: the job name is the run name (deterministic per
dag/run/task/map index), so a retry or a restarted worker finds the job it
created and attaches to it. A job that already failed is deleted and submitted
again (its pod starts from a clean run directory: see the entrypoint). A
succeeded one is reused. Secrets go into a Secret owned by the TrainJob.

Before a TrainJob is created, the referenced runtime is read and the TrainJob is
checked against the rules of the Trainer's admission webhook (:mod:`.admission`).

Blocking calls run the async client under ``asyncio.run`` (see :meth:`KubernetesBackend._run`
for a call made while a loop runs, as ``cancel`` is from Airflow's SIGTERM handler); the
deferrable path (``poll``, a trigger running :func:`follow_job`, then ``complete``) shares
every piece with ``wait``.

A job never outlives its task: a failed create removes what it made, a timeout deletes the
job, ``cancel`` (the operator's ``on_kill``, the trigger's) deletes it with its Secret and
ConfigMap. Clean-up waits at most ``CLEANUP_SECONDS`` for an API server that does not answer;
the job's own ``activeDeadlineSeconds`` (from ``execution_timeout``) still ends it then.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends.base import (
    BackendName,
    Credentials,
    JobHandle,
    JobResult,
    JobStatus,
    LogSink,
    TrainingBackend,
)
from airflow_provider_sft.core.backends.kubernetes import admission
from airflow_provider_sft.core.backends.kubernetes.client import KubeClient
from airflow_provider_sft.core.backends.kubernetes.config import KubernetesConfig, SpecGeneration
from airflow_provider_sft.core.backends.kubernetes.kinds import RESOURCES, JobKind, JobResource, resource_of
from airflow_provider_sft.core.backends.kubernetes.logs import PodLog, backfill_log, follow_log
from airflow_provider_sft.core.backends.kubernetes.manifest import (
    NodeWork,
    build_program_configmap,
    build_secret,
    build_trainjob,
    detect_generation,
    label_value,
    owner_reference,
    program_configmap_name,
    secret_name,
    step_work,
    training_work,
)
from airflow_provider_sft.core.backends.kubernetes.pytorchjob import build_pytorchjob
from airflow_provider_sft.core.backends.kubernetes.retry import KubeApiError
from airflow_provider_sft.core.backends.kubernetes.status import GONE, JobPhase, JobState, classify_job_status
from airflow_provider_sft.core.backends.kubernetes.watch import WaitResult, follow_job
from airflow_provider_sft.core.clock import SYSTEM_CLOCK, Clock
from airflow_provider_sft.core.errors import InvalidParameterError, TrainingFailedError
from airflow_provider_sft.core.params import hub_token_warning
from airflow_provider_sft.core.pod.protocol import parse_result
from airflow_provider_sft.core.results.live_progress import ProgressSink
from airflow_provider_sft.core.run import TrainingRun
from airflow_provider_sft.core.secret_env import looks_secret

log = logging.getLogger(__name__)
T = TypeVar("T")
Connector = Callable[[], contextlib.AbstractAsyncContextManager[KubeClient]]
DELETE_WAIT_SECONDS = 120
LOG_DRAIN_SECONDS = 10
#: The longest a clean-up (a kill's, a timeout's) waits for the API server: a restarting one is
#: back well within it (refused connections are retried for ~8 s), a frozen one is not waited for.
CLEANUP_SECONDS = 15
#: How a node that saved its state on SIGTERM and stopped ends its log (``ERROR: preempted: ...``).
PREEMPTED_ERROR = "preempted:"


def result_of(
    namespace: str,
    name: str,
    waited: WaitResult,
    *,
    start_timeout_seconds: float | None = None,
    kind: str = c.TRAINJOB_KIND,
) -> JobResult:
    """What a finished wait means for the run (the trigger's event carries this)."""
    job = f"{kind} {namespace}/{name}"
    state = waited.state
    pending = f" ({'; '.join(waited.pending)})" if waited.pending else ""
    if waited.timeout == "start":
        if state.phase is JobPhase.SUSPENDED:
            return JobResult(
                JobStatus.TIMED_OUT,
                f"{job} stayed suspended for {start_timeout_seconds:g}s: no queue admitted it. With Kueue, check "
                "that the kueue.x-k8s.io/queue-name label (job_labels) names a LocalQueue and that its "
                f"ClusterQueue has quota for the requested resources{pending}",
                reason="StartTimeout",
            )
        return JobResult(
            JobStatus.TIMED_OUT,
            f"{job} did not start within {start_timeout_seconds:g}s{pending or ': its pods were never ready'}",
            reason="StartTimeout",
        )
    if waited.timeout == "run":
        if state.phase is JobPhase.PREEMPTED:
            why = "it was preempted and still waits for readmission"
        else:
            why = "" if state.phase.started else f"it never started{pending}"
        return JobResult(
            JobStatus.TIMED_OUT,
            f"{job} did not finish in time{f', {why}' if why else ''}",
            reason="DeadlineExceeded",
        )
    if state.phase is JobPhase.SUCCEEDED:
        return JobResult(JobStatus.SUCCEEDED, "training completed", reason=state.reason)
    detail = ": ".join(part for part in (state.reason, state.message) if part) or "no reason given"
    return JobResult(JobStatus.FAILED, f"{job} failed: {detail}", reason=state.reason)


@dataclass
class KubernetesBackend(TrainingBackend):
    config: KubernetesConfig
    connect: Connector
    credentials: Credentials = field(default_factory=Credentials)
    run_labels: dict[str, str] = field(default_factory=dict)  # dag/task/run identifiers
    clock: Clock = SYSTEM_CLOCK
    name = BackendName.KUBERNETES
    deferrable = True

    def _run(self, work: Callable[[KubeClient], Awaitable[T]]) -> T:
        """Run ``work`` on a client of its own, blocking until it is done.

        On this thread's own ``asyncio.run``, unless a loop already runs in this thread: Airflow's
        SIGTERM handler calls ``on_kill`` (so :meth:`cancel`) in the main thread, in the middle of
        the blocking wait's loop, which cannot be entered again. The work then gets its own loop on
        a thread of its own, and this thread waits for it (the interrupted loop waits too).
        """

        async def main() -> T:
            async with self.connect() as client:
                return await work(client)

        if not _loop_running():
            return asyncio.run(main())
        with ThreadPoolExecutor(1, thread_name_prefix="sft-kubernetes") as pool:
            return pool.submit(asyncio.run, main()).result()

    # --- checks before anything is sent ---------------------------------------------------

    def require_pvc(self) -> None:
        if not self.config.pvc_name:
            raise InvalidParameterError(
                {
                    "pvc_name": "is required on the kubernetes backend: the workspace PersistentVolumeClaim "
                    "the node pods mount (ReadWriteMany for more than one worker). A pod's own filesystem "
                    "is gone with the pod, and the model with it"
                }
            )

    def preflight(self, run: TrainingRun) -> None:
        self.require_pvc()
        secret_like = sorted(key for key, value in run.params.envs.items() if looks_secret(key, value))
        if secret_like:
            raise InvalidParameterError(
                {
                    "envs": f"{', '.join(secret_like)} look(s) like a secret: envs become plain values in the "
                    "TrainJob spec. Pass the HuggingFace token with hf_conn_id (or HF_TOKEN in the worker's "
                    "environment), which goes through a Kubernetes Secret"
                }
            )
        self.work(run)  # the node pods' resources must agree with the training parameters

    def labels(self) -> dict[str, str]:
        base = {c.LABEL_MANAGED_BY: c.MANAGED_BY_VALUE, c.LABEL_COMPONENT: "sft-training"}
        return {**base, **{key: label_value(value) for key, value in self.run_labels.items()}}

    @property
    def resource(self) -> JobResource:
        return RESOURCES[self.config.job_kind]

    def work(self, run: TrainingRun) -> NodeWork:
        return training_work(
            run, self.config, labels=self.labels(), secret_env=list(self.credentials.secret_env())
        )

    def manifest(
        self, work: NodeWork, generation: SpecGeneration | None, timeout_seconds: float | None = None
    ) -> dict[str, Any]:
        """The job of ``self.config.job_kind`` for ``work`` (``generation``: a TrainJob's)."""
        deadline = None if timeout_seconds is None else int(timeout_seconds) + 1
        pull = bool(self.credentials.oci_pull_secret)
        if self.config.job_kind is JobKind.PYTORCHJOB:
            return build_pytorchjob(work, self.config, has_pull_secret=pull, active_deadline_seconds=deadline)
        assert generation is not None
        return build_trainjob(
            work, self.config, generation=generation, has_pull_secret=pull, active_deadline_seconds=deadline
        )

    async def checked_manifest(
        self, client: KubeClient, work: NodeWork, timeout_seconds: float | None = None
    ) -> dict[str, Any]:
        """The manifest, checked before anything is created: a TrainJob against its runtime and
        the Trainer webhook's rules (a PyTorchJob has neither: its CRD's Strict schema decides)."""
        if self.config.job_kind is JobKind.PYTORCHJOB:
            return self.manifest(work, None, timeout_seconds)
        generation = await self.generation(client)
        runtime = await self.runtime(client)
        body = self.manifest(work, generation, timeout_seconds)
        admission.check(body, runtime, generation, priority_class_name=self.config.priority_class_name)
        if warning := admission.grace_period_warning(work.termination_grace_seconds, runtime, generation):
            log.warning(warning)
        return body

    async def generation(self, client: KubeClient) -> SpecGeneration:
        if self.config.spec_generation is not SpecGeneration.AUTO:
            return self.config.spec_generation
        return detect_generation(await client.read_crd(self.resource))

    async def runtime(self, client: KubeClient) -> dict[str, Any]:
        """The referenced runtime; a missing one is an error that lists those that exist."""
        kind, name, ns = self.config.runtime_kind.value, self.config.runtime_name, self.config.namespace
        runtime = await client.get_runtime(kind, ns, name)
        if runtime is not None:
            return runtime
        where = "" if kind == c.CLUSTER_TRAINING_RUNTIME_KIND else f" in namespace {ns}"
        try:
            names = await client.list_runtime_names(kind, ns)
            available = f"available: {', '.join(names)}" if names else f"there is no {kind}{where}"
        except KubeApiError as exc:
            available = f"the {kind}s could not be listed ({exc.status} {exc.reason})"
        other = "TrainingRuntime" if kind == c.CLUSTER_TRAINING_RUNTIME_KIND else "ClusterTrainingRuntime"
        raise InvalidParameterError(
            {
                "runtime_name": f"{kind} {name!r} does not exist{where}; {available}. Set runtime_name "
                f"(and runtime_kind={other!r} for a runtime of the other scope)"
            }
        )

    # --- the contract ---------------------------------------------------------------------

    def submit(self, run: TrainingRun, *, timeout_seconds: float | None = None) -> JobHandle:
        """Create the TrainJob, or attach to the one an earlier attempt created."""
        self.preflight(run)
        if not self.credentials.hf_token and (warning := hub_token_warning(run.params.base_model)):
            log.warning(warning)
        return self._run(lambda client: self._submit(client, run, timeout_seconds))

    async def _submit(self, client: KubeClient, run: TrainingRun, timeout_seconds: float | None) -> JobHandle:
        ns, kind = self.config.namespace, self.resource.kind.value
        body = await self.checked_manifest(client, self.work(run), timeout_seconds)
        handle = self.handle(run.name, run.output_dir)
        existing = await client.get_job(self.resource, ns, run.name)
        if existing is not None:
            state = classify_job_status(existing)
            if state.phase is not JobPhase.FAILED:
                log.info("Attaching to existing %s %s/%s (%s)", kind, ns, run.name, state.phase.value)
                return _with_uid(handle, existing)
            log.info(
                "%s %s/%s failed earlier (%s); deleting it to submit again", kind, ns, run.name, state.reason
            )
            await self._delete_and_wait(client, self.resource, ns, run.name)
        try:
            created = await self._create_training(client, run, body)
        except KubeApiError as exc:
            if exc.status == 409:  # created by a concurrent or earlier attempt: attach
                return handle
            raise
        return _with_uid(handle, created)

    async def _create_training(
        self, client: KubeClient, run: TrainingRun, body: dict[str, Any]
    ) -> dict[str, Any]:
        ns = self.config.namespace
        # A new attempt id: the nodes of this job ignore a data marker an earlier attempt left.
        config = dataclasses.replace(run, attempt=uuid.uuid4().hex[:12]).to_json_dict()
        created = await self._create(client, body, config)
        log.info("Created %s %s/%s", self.resource.kind.value, ns, run.name)
        return created

    async def _create(
        self, client: KubeClient, body: dict[str, Any], config: dict[str, Any]
    ) -> dict[str, Any]:
        """The program's ConfigMap and the Secret, then the job that owns them; the job as created.

        A 409 on the job (a concurrent attempt created it, with these objects) is left to the
        caller; any other failure removes what this call made, the job included.
        """
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        owned = [build_program_configmap(name, ns, config=config, labels=self.labels())]
        secret = build_secret(
            name,
            ns,
            env=self.credentials.secret_env(),
            oci_pull_secret=self.credentials.oci_pull_secret,
            labels=self.labels(),
        )
        if secret is not None:
            owned.append(secret)
        made: list[dict[str, Any]] = []
        created: dict[str, Any] | None = None
        try:
            for item in owned:
                await client.put_owned(item)
                made.append(item)
            created = await client.create_job(self.resource, body)
            for item in owned:
                await client.set_owner(item["kind"], ns, item["metadata"]["name"], owner_reference(created))
            return created
        except Exception as exc:
            if created is None and isinstance(exc, KubeApiError) and exc.status == 409:
                raise
            with contextlib.suppress(KubeApiError):  # the first failure is the one to report
                if created is not None:
                    await client.delete_job(self.resource, ns, name)
                for item in reversed(made):
                    await client.delete_owned(item["kind"], ns, item["metadata"]["name"])
            raise

    def handle(self, run_name: str, output_dir: str) -> JobHandle:
        return JobHandle(
            self.name, run_name, output_dir, kind=self.resource.kind.value, namespace=self.config.namespace
        )

    async def _delete_and_wait(
        self, client: KubeClient, resource: JobResource, namespace: str, name: str
    ) -> None:
        await client.delete_job(resource, namespace, name)
        deadline = self.clock.monotonic() + DELETE_WAIT_SECONDS
        while await client.get_job(resource, namespace, name) is not None:
            if self.clock.monotonic() >= deadline:
                raise KubeApiError(
                    f"Delete {resource.kind.value} {namespace}/{name}",
                    0,
                    "Timeout",
                    "still present after deletion",
                )
            await self.clock.asleep(1.0)

    def poll(self, handle: JobHandle) -> JobResult:
        resource = resource_of(handle.kind)

        async def read(client: KubeClient) -> JobResult:
            job = await client.get_job(resource, job_namespace(handle), handle.name)
            state = classify_job_status(job) if job is not None else GONE
            if not state.terminal:
                return JobResult(JobStatus.RUNNING, state.describe())
            return result_of(job_namespace(handle), handle.name, WaitResult(state), kind=resource.kind.value)

        return self._run(read)

    def wait(
        self,
        handle: JobHandle,
        *,
        on_log: LogSink,
        timeout_seconds: float | None = None,
        on_progress: ProgressSink | None = None,
    ) -> JobResult:
        """Block (in the worker) until the job ends, following its status with a watch.

        Once the job runs, the rank-0 pod's log is streamed live: ``on_log`` gets its provider
        lines (see :class:`PodLog`) and the job's states; ``on_progress`` its progress, as a
        trigger reads it (:func:`follow_job`).
        """
        return self._run(lambda client: self._follow(client, handle, on_log, timeout_seconds, on_progress))

    async def _follow(
        self,
        client: KubeClient,
        handle: JobHandle,
        on_log: LogSink,
        timeout_seconds: float | None,
        on_progress: ProgressSink | None = None,
    ) -> JobResult:
        """Follow the job to its end, then complete it (which backfills what the log stream missed)."""
        ns, resource = job_namespace(handle), resource_of(handle.kind)
        log_task: asyncio.Task | None = None
        pod_log = PodLog.of(on_log, ns)

        def on_state(state: JobState) -> None:
            nonlocal log_task
            pod_log(state.line(f"{resource.kind.value} {handle.name}"))
            # A preempted job's follower streams its stopping pods to their end; the pods of a
            # readmission are followed by a new one.
            live = state.phase.started and state.phase is not JobPhase.PREEMPTED and not state.terminal
            if live and (log_task is None or log_task.done()):
                log_task = asyncio.ensure_future(
                    follow_log(client, resource, ns, handle.name, pod_log, clock=self.clock)
                )

        try:
            waited = await follow_job(
                client,
                resource,
                ns,
                handle.name,
                clock=self.clock,
                timeout_seconds=timeout_seconds,
                start_timeout_seconds=self.config.start_timeout_seconds,
                on_state=on_state,
                on_note=pod_log,
                on_progress=on_progress,
            )
        except BaseException:
            await _drain(log_task, 0)
            raise
        # The last lines of a job that ended are worth a moment, from a log that streams: one not
        # found or not started (a job that failed before its pods ran) is copied instead, and a
        # job past its deadline is deleted now.
        await _drain(log_task, LOG_DRAIN_SECONDS if pod_log.lines and waited.timeout is None else 0)
        result = result_of(
            ns,
            handle.name,
            waited,
            start_timeout_seconds=self.config.start_timeout_seconds,
            kind=resource.kind.value,
        )
        return await self._complete(client, handle, result, pod_log)

    # --- workspace steps --------------------------------------------------------------------

    def run_step(
        self,
        step: str,
        job_name: str,
        config: dict[str, Any],
        *,
        on_log: LogSink,
        timeout_seconds: float | None = None,
        resources: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Run a workspace step of the pod program as a one-node job next to the PVC, sized by
        ``resources`` (requests = limits); its result.

        The step's provider lines go to ``on_log`` (see :class:`PodLog`; its result line is read,
        never shown); a failure raises :class:`TrainingFailedError` with the pod's ``ERROR:`` line.
        """
        self.require_pvc()
        return self._run(
            lambda client: self._run_step(client, step, job_name, config, on_log, timeout_seconds, resources)
        )

    async def _run_step(
        self,
        client: KubeClient,
        step: str,
        name: str,
        config: dict[str, Any],
        on_log: LogSink,
        timeout_seconds: float | None,
        resources: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        ns = self.config.namespace
        work = step_work(
            name,
            step,
            self.config,
            labels={**self.labels(), c.LABEL_COMPONENT: f"sft-{step}"},
            secret_env=list(self.credentials.secret_env()),
            resources=resources,
        )
        body = await self.checked_manifest(client, work)
        if await client.get_job(self.resource, ns, name) is not None:  # a step is cheap: always run it afresh
            await self._delete_and_wait(client, self.resource, ns, name)
        await self._create(client, body, config)
        log.info("Created %s %s/%s for the %s step", self.resource.kind.value, ns, name, step)
        pod_log = PodLog(on_log, ns)
        result = await self._follow(client, self.handle(name, ""), pod_log, timeout_seconds)
        if (
            result.succeeded
            and pod_log.result_line is not None
            and (parsed := parse_result([pod_log.result_line])) is not None
        ):
            return parsed
        raise TrainingFailedError(
            f"The {step} step failed: {result.message if not result.succeeded else 'it printed no result'}"
        )

    def complete(self, handle: JobHandle, result: JobResult, *, on_log: LogSink) -> JobResult:
        return self._run(lambda client: self._complete(client, handle, result, on_log))

    async def _complete(
        self,
        client: KubeClient,
        handle: JobHandle,
        result: JobResult,
        on_log: LogSink,
    ) -> JobResult:
        """Backfill the rank-0 pod log's lines the task log has not got, and clean up by policy,
        within ``CLEANUP_SECONDS``.

        A failure's message gains the pod's own reason, its last ``ERROR:`` line, and the task
        log the pod log's last lines it did not show (the pod goes with its job). An API server
        that does not answer in time is reported, not waited for.
        """
        ns, resource = job_namespace(handle), resource_of(handle.kind)
        pod_log = PodLog.of(on_log, ns)
        try:
            return await asyncio.wait_for(self._finish(client, handle, result, pod_log), CLEANUP_SECONDS)
        except asyncio.TimeoutError:
            note = (
                f"the API server did not answer within {CLEANUP_SECONDS}s: {resource.kind.value} "
                f"{ns}/{handle.name} may still exist (delete it by hand if it is still there)"
            )
            pod_log(f"Clean-up stopped: {note}")
            return (
                result
                if result.succeeded
                else dataclasses.replace(result, message=f"{result.message}; {note}")
            )

    async def _finish(
        self, client: KubeClient, handle: JobHandle, result: JobResult, pod_log: PodLog
    ) -> JobResult:
        ns, resource = job_namespace(handle), resource_of(handle.kind)
        await backfill_log(client, resource, ns, handle.name, pod_log)
        if not result.succeeded:
            pod_log.show_failure_context()
            if pod_log.last_error:
                reported = f"{result.message}; the pod reported: {pod_log.last_error}"
                if pod_log.last_error.startswith(PREEMPTED_ERROR):
                    reported += (
                        " (its node was stopped, not by a queue: a retry of the task resumes from "
                        'the state it saved, with resume="auto")'
                    )
                result = dataclasses.replace(result, message=reported)
        keep = (result.succeeded and not self.config.delete_on_success) or (
            result.status is JobStatus.FAILED and self.config.keep_failed_jobs
        )
        if not keep:  # success, or a failure nobody keeps; a timeout never leaves its job running
            await delete_job_and_owned(client, handle)
        elif not result.succeeded:
            pod_log(
                f"Kept the failed {resource.kind.value} {ns}/{handle.name} for debugging (keep_failed_jobs)"
            )
        return result

    def cancel(self, handle: JobHandle) -> None:
        """Delete the job with its Secret and ConfigMap, within ``CLEANUP_SECONDS``; safe from a
        signal handler (see :meth:`_run`) and for a job that was never created."""

        async def cancel(client: KubeClient) -> None:
            try:
                await asyncio.wait_for(delete_job_and_owned(client, handle), CLEANUP_SECONDS)
            except asyncio.TimeoutError:
                raise KubeApiError(
                    f"Delete {resource_of(handle.kind).kind.value} {handle.namespace}/{handle.name}",
                    0,
                    "Timeout",
                    f"the API server did not answer within {CLEANUP_SECONDS}s",
                ) from None

        self._run(cancel)


async def delete_job_and_owned(client: KubeClient, handle: JobHandle) -> None:
    """Delete a job and the Secret and ConfigMap made for it (each may already be gone)."""
    ns, resource = job_namespace(handle), resource_of(handle.kind)
    if await client.delete_job(resource, ns, handle.name):
        log.info("Deleted %s %s/%s", resource.kind.value, ns, handle.name)
    # Owned by the job, so garbage-collected with it; deleted here too for clusters (and
    # test servers) without the garbage collector, and for a job never created.
    await client.delete_owned("Secret", ns, secret_name(handle.name))
    await client.delete_owned("ConfigMap", ns, program_configmap_name(handle.name))


def _with_uid(handle: JobHandle, job: dict[str, Any]) -> JobHandle:
    """The handle with the job's uid (the same name later may be another job) and its
    ``creationTimestamp`` (the time to the first step counts from it)."""
    metadata = job.get("metadata") or {}
    return dataclasses.replace(handle, uid=metadata.get("uid"), created=metadata.get("creationTimestamp"))


def job_namespace(handle: JobHandle) -> str:
    """The namespace of a cluster job's handle (a handle of another backend has none)."""
    if handle.namespace is None:
        raise ValueError(f"{handle.name} is not a cluster job: its handle has no namespace")
    return handle.namespace


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _drain(task: asyncio.Task | None, seconds: float) -> None:
    """Give the log follower ``seconds`` for its last lines, then stop it."""
    if task is None:
        return
    with contextlib.suppress(asyncio.TimeoutError, Exception):
        await asyncio.wait_for(asyncio.shield(task), seconds)
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

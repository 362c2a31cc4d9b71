"""``SFTTrainOperator``: one SFT training run on a backend, orchestration only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.configuration import conf
from airflow.exceptions import AirflowProviderDeprecationWarning
from airflow.sdk import BaseOperator

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends import (
    TRAINING_JOB_XCOM_KEY,
    Credentials,
    JobHandle,
    JobResult,
    JobStatus,
    TrainingBackend,
)
from airflow_provider_sft.core.backends.factory import BackendConfig
from airflow_provider_sft.core.backends.kubernetes import RuntimeKind, SpecGeneration
from airflow_provider_sft.core.backends.kubernetes.config import renamed_start_timeout
from airflow_provider_sft.core.checkpoint_grace import checked_checkpoint_grace_seconds
from airflow_provider_sft.core.clock import SYSTEM_CLOCK
from airflow_provider_sft.core.errors import TrainingFailedError, TrainingTimeoutError
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.results.live_progress import (
    PROGRESS_XCOM_KEY,
    LiveProgress,
    ProgressSink,
    progress_text,
)
from airflow_provider_sft.core.run import Device, TrainingRun
from airflow_provider_sft.core.training.data_report import checked_max_dropped_fraction
from airflow_provider_sft.core.training.resume import checked_resume
from airflow_provider_sft.lineage import LineageMixin
from airflow_provider_sft.links import TrainingJobConsoleLink, TrainingResultsLink
from airflow_provider_sft.operators.failures import bad_input_is_final
from airflow_provider_sft.operators.masking import mask_secret_envs
from airflow_provider_sft.operators.training_log import log_training_line
from airflow_provider_sft.operators.workspace import (
    backend_config,
    connected_backend,
    dag_run_dir_name,
    workspace_root,
)
from airflow_provider_sft.triggers.events import EventStatus, validate_event

#: The training parameters, in the seed component's order (names without ``training_``).
TRAINING_PARAMETERS: tuple[str, ...] = tuple(SFTParams.model_fields)
#: Kubernetes backend settings that are operator parameters of the same name (templated).
KUBERNETES_PARAMETERS: tuple[str, ...] = (
    "namespace",
    "job_kind",
    "runtime_name",
    "runtime_kind",
    "pvc_name",
    "service_account",
    "job_labels",
    "job_annotations",
    "tolerations",
    "node_selector",
    "affinity",
    "priority_class_name",
    "shm_size",
    "start_timeout_seconds",
    "scheduling_queue",
    "ttl_seconds_after_finished",
)
#: The trigger's deadline fires this long before Airflow's own deferral timeout, so the trigger's
#: timeout event (which deletes the TrainJob) wins; ``resume_execution`` cleans up if it ever does not.
DEFERRAL_TIMEOUT_MARGIN = timedelta(minutes=5)


class SFTTrainOperator(LineageMixin, BaseOperator):
    """Fine-tune a causal LM with SFT (instructlab-training) on a backend.

    Every training parameter of the seed "SFT Training Component" is an argument
    here, named without its ``training_`` prefix; ``None`` means the seed's default
    (see :class:`~airflow_provider_sft.core.params.SFTParams`). All of them, and the
    paths, are templated. Parameters are validated after rendering and before
    anything starts; a bad value fails the task with a message naming it.

    :param dataset_path: chat JSONL to train on, e.g. the ``path`` XCom of
        :class:`ResolveDatasetOperator`. (templated)
    :param workspace: workspace root; the run writes to ``<workspace>/runs/<run name>/`` (on the
        ``kubernetes`` backend in ``cluster`` mode: ``<pvc_mount_path>/runs/<run name>/``). (templated)
    :param backend: ``"local"`` (this machine; CUDA when present, else the CPU loop) or
        ``"kubernetes"`` (a Kubeflow Trainer TrainJob). (templated)
    :param run_name: name of the run; default derived from dag id, run id, task id and
        map index, so a retry of the same task reuses the name. (templated)
    :param device: ``"auto"``, ``"cpu"`` or ``"cuda"`` for the local backend.
    :param validation_split: beyond the seed's parameters: the share of samples (in [0, 1)) held out,
        as instructlab-training holds them out, for a validation loss computed every
        ``validation_frequency`` optimizer steps (required then) and, on the CPU loop, at the end.
        It goes to the metrics file, ``metrics.json`` and the chart. (templated)

    Kubernetes backend (a Kubeflow Trainer TrainJob). All of these are templated; maps take a
    dict or ``"k=v,k=v"``, tolerations and affinity a list/dict or its JSON:

    :param workspace_mode: ``cluster`` (default: only the cluster mounts the PVC, at
        ``pvc_mount_path``) or ``shared`` (the workers mount it too, at ``workspace``).
    :param pvc_mount_path: where the node pods mount the PVC in ``cluster`` mode (``/workspace``).

    :param kubernetes_conn_id: a cncf.kubernetes ``kubernetes`` connection. ``KUBERNETES_SERVER_URL``
        and ``KUBERNETES_AUTH_TOKEN`` in the environment take precedence, as in the KFP component.
    :param namespace: namespace of the TrainJob; default: the connection's, else ``default``.
    :param runtime_name: the training runtime (default ``torch-distributed``, which every upstream
        install has; ``training-hub`` on OpenShift AI). It is read before anything is created: a
        missing one fails the task with the runtimes that exist.
    :param runtime_kind: ``ClusterTrainingRuntime`` (default) or a namespaced ``TrainingRuntime``.
    :param job_kind: ``TrainJob`` (Kubeflow Trainer v2, default) or ``PyTorchJob`` (Training
        Operator v1: Master + Workers; needs ``image`` and the ``pytorchjob`` extra). Runtimes
        and spec generations apply to TrainJobs only.
    :param scheduling_queue: PyTorchJob only: ``runPolicy.schedulingPolicy.queue`` (Volcano).
    :param ttl_seconds_after_finished: PyTorchJob only: the operator deletes a finished job after this.
    :param pvc_name: the workspace PersistentVolumeClaim (required): ReadWriteMany for more than one worker.
    :param service_account: service account of the training pods.
    :param job_labels: labels of the TrainJob itself, e.g. ``kueue.x-k8s.io/queue-name=gpu-queue``
        or ``kueue.x-k8s.io/priority-class=high`` (``metadata_labels`` go on the pods).
    :param job_annotations: annotations of the TrainJob itself.
    :param tolerations: tolerations of the node pods, e.g. ``[{"key": "nvidia.com/gpu", "operator": "Exists"}]``.
    :param node_selector: node selector of the node pods.
    :param affinity: affinity of the node pods (a Kubernetes ``Affinity`` object).
    :param priority_class_name: pod priority class. The TrainJob API has no field for it, so it
        must be the one the runtime sets; anything else is refused with what to do instead.
    :param shm_size: size of a memory-backed ``/dev/shm`` in the node pods (e.g. ``"16Gi"``).
    :param start_timeout_seconds: how long the job may stay queued (suspended) or pending before it is
        deleted and the task fails, with the scheduler's events in the message. ``execution_timeout``
        bounds the whole run and also becomes the TrainJob's ``activeDeadlineSeconds`` (v2.2+).
    :param spec_generation: ``"auto"`` (read the served CRD), ``"v2.1"``, ``"v2.2"`` or ``"v2.3"``
        (v2.3: the runtime patch also sets the pods' grace period).
    :param image: trainer image override. The node container needs Python with torch and
        instructlab-training; nothing is installed at start (the program comes in a ConfigMap).
    :param hf_conn_id: a ``huggingface`` connection (its password is the token); default: ``HF_TOKEN``
        from the worker's environment. ``OCI_PULL_SECRET_MODEL_DOWNLOAD`` is read from the
        environment. Both reach the pod through a Secret owned by the TrainJob, never the spec.
    :param deferrable: wait in the triggerer (default: ``[operators] default_deferrable``). The
        ``local`` backend cannot be deferred (training is a child process of the worker): there it
        is ignored with a warning, and the task keeps its worker slot until training ends.
    :param keep_failed_jobs: keep a failed TrainJob for debugging instead of deleting it.
    :param delete_on_success: delete the TrainJob (and its Secret) once it has succeeded.
    :param console_url_template: URL of a TrainJob in the cluster console, with ``{namespace}``
        and ``{name}`` placeholders, for the task's extra link.
    :param start_timeout: deprecated, the old name of ``start_timeout_seconds``.
    :param max_dropped_fraction: the data gate, applied when the training job processes the data
        itself (no ``PrepareDataOperator`` ran before it, or its data no longer matches): past this
        share of samples dropped by the length filters, node 0 fails before training. (templated)
    :param resume: ``"auto"`` (default): a new attempt of the run (after a preemption, a Kueue
        suspension or a task retry) continues from its newest complete saved state of the same
        settings, data, base model and code, and SIGTERM saves one; ``"never"``: every attempt
        starts clean. The task log says in one line what it starts from, and why. (templated)
    :param checkpoint_grace_seconds: how long a preempted training pod (Kueue suspension, node
        drain, spot reclaim) may take after SIGTERM to finish its step and save a full state: the
        pods' ``terminationGracePeriodSeconds`` (TrainJob on Trainer v2.3+, PyTorchJob; on v2.1
        and v2.2 the runtime's own period holds and the task log says so). Whole seconds, 1 to
        3600. Empty: derived from the base model when it is a directory this worker can read
        (16 bytes per parameter, fp32 weights + AdamW moments + the HF checkpoint, written at an
        assumed 200 MB/s, x1.5, + 60 s for the step in flight: 270 s for 1.5B parameters), else
        900 s (that figure for 7B). A pod that has saved exits at once, so longer costs nothing
        unless it hangs. (templated)

    Returns (XCom) ``run_name``, ``backend``, ``output_dir``, ``metrics_path`` and ``job_created``
    (when the job was created, ISO 8601: the export's time to the first step counts from it); the
    job coordinates are also pushed as the ``training_job`` XCom as soon as it starts.
    """

    template_fields: Sequence[str] = (
        "dataset_path",
        "workspace",
        "backend",
        "run_name",
        "workspace_mode",
        "pvc_mount_path",
        *KUBERNETES_PARAMETERS,
        "hf_conn_id",
        "max_dropped_fraction",
        "resume",
        "checkpoint_grace_seconds",
        *TRAINING_PARAMETERS,
    )
    template_fields_renderers = {
        "envs": "json",
        "metadata_labels": "json",
        "metadata_annotations": "json",
        "job_labels": "json",
        "tolerations": "json",
        "affinity": "json",
    }
    ui_color = "#f4ecf7"
    operator_extra_links = (TrainingJobConsoleLink(), TrainingResultsLink())

    def __init__(
        self,
        *,
        dataset_path: str,
        workspace: str,
        backend: str = "local",
        run_name: str | None = None,
        device: str = Device.AUTO.value,
        base_model: str | None = None,
        effective_batch_size: int | str | None = None,
        max_tokens_per_gpu: int | str | None = None,
        max_seq_len: int | str | None = None,
        learning_rate: float | str | None = None,
        lr_warmup_steps: int | str | None = None,
        checkpoint_at_epoch: bool | str | None = None,
        num_epochs: int | str | None = None,
        data_output_dir: str | None = None,
        envs: str | dict[str, str] | None = None,
        resource_cpu_per_worker: str | None = None,
        resource_gpu_per_worker: int | str | None = None,
        resource_memory_per_worker: str | None = None,
        resource_num_procs_per_worker: str | int | None = None,
        resource_num_workers: int | str | None = None,
        metadata_labels: str | dict[str, str] | None = None,
        metadata_annotations: str | dict[str, str] | None = None,
        seed: int | str | None = None,
        use_liger: bool | str | None = None,
        lr_scheduler: str | None = None,
        save_samples: int | str | None = None,
        accelerate_full_state_at_epoch: bool | str | None = None,
        fsdp_sharding_strategy: str | None = None,
        validation_split: float | str | None = None,
        validation_frequency: int | str | None = None,
        kubernetes_conn_id: str | None = "kubernetes_default",
        namespace: str | None = None,
        runtime_name: str = c.DEFAULT_RUNTIME,
        runtime_kind: str = RuntimeKind.CLUSTER.value,
        job_kind: str = "TrainJob",
        scheduling_queue: str | None = None,
        ttl_seconds_after_finished: int | str | None = None,
        pvc_name: str | None = None,
        service_account: str | None = None,
        job_labels: str | dict[str, str] | None = None,
        job_annotations: str | dict[str, str] | None = None,
        tolerations: str | list[dict[str, Any]] | None = None,
        node_selector: str | dict[str, str] | None = None,
        affinity: str | dict[str, Any] | None = None,
        priority_class_name: str | None = None,
        shm_size: str | None = None,
        start_timeout_seconds: float | str | None = None,
        spec_generation: str = SpecGeneration.AUTO.value,
        image: str | None = None,
        workspace_mode: str | None = None,
        pvc_mount_path: str | None = None,
        hf_conn_id: str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        keep_failed_jobs: bool = False,
        delete_on_success: bool = True,
        console_url_template: str | None = None,
        start_timeout: float | str | None = None,
        max_dropped_fraction: float | str = c.DEFAULT_MAX_DROPPED_FRACTION,
        resume: str = c.DEFAULT_RESUME,
        checkpoint_grace_seconds: int | str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("multiple_outputs", True)  # each result key is its own XCom too
        super().__init__(**kwargs)
        self.dataset_path = dataset_path
        self.workspace = workspace
        self.backend = backend
        self.run_name = run_name
        self.device = device
        self.base_model = base_model
        self.effective_batch_size = effective_batch_size
        self.max_tokens_per_gpu = max_tokens_per_gpu
        self.max_seq_len = max_seq_len
        self.learning_rate = learning_rate
        self.lr_warmup_steps = lr_warmup_steps
        self.checkpoint_at_epoch = checkpoint_at_epoch
        self.num_epochs = num_epochs
        self.data_output_dir = data_output_dir
        self.envs = envs
        self.resource_cpu_per_worker = resource_cpu_per_worker
        self.resource_gpu_per_worker = resource_gpu_per_worker
        self.resource_memory_per_worker = resource_memory_per_worker
        self.resource_num_procs_per_worker = resource_num_procs_per_worker
        self.resource_num_workers = resource_num_workers
        self.metadata_labels = metadata_labels
        self.metadata_annotations = metadata_annotations
        self.seed = seed
        self.use_liger = use_liger
        self.lr_scheduler = lr_scheduler
        self.save_samples = save_samples
        self.accelerate_full_state_at_epoch = accelerate_full_state_at_epoch
        self.fsdp_sharding_strategy = fsdp_sharding_strategy
        self.validation_split = validation_split
        self.validation_frequency = validation_frequency
        self.kubernetes_conn_id = kubernetes_conn_id
        self.namespace = namespace
        self.runtime_name = runtime_name
        self.runtime_kind = runtime_kind
        self.job_kind = job_kind
        self.scheduling_queue = scheduling_queue
        self.ttl_seconds_after_finished = ttl_seconds_after_finished
        self.pvc_name = pvc_name
        self.service_account = service_account
        self.job_labels = job_labels
        self.job_annotations = job_annotations
        self.tolerations = tolerations
        self.node_selector = node_selector
        self.affinity = affinity
        self.priority_class_name = priority_class_name
        self.shm_size = shm_size
        self.start_timeout_seconds = renamed_start_timeout(
            start_timeout, start_timeout_seconds, category=AirflowProviderDeprecationWarning
        )
        self.spec_generation = SpecGeneration(spec_generation)  # checked now: not templated
        self.image = image
        self.workspace_mode = workspace_mode
        self.pvc_mount_path = pvc_mount_path
        self.hf_conn_id = hf_conn_id
        self.deferrable = deferrable
        self.keep_failed_jobs = keep_failed_jobs
        self.delete_on_success = delete_on_success
        self.console_url_template = console_url_template
        self.max_dropped_fraction = max_dropped_fraction
        self.resume = resume
        self.checkpoint_grace_seconds = checkpoint_grace_seconds
        self._backend: TrainingBackend | None = None
        self._handle: JobHandle | None = None  # set before submit: a kill during submit deletes it
        self._killed = False

    # --- helpers -------------------------------------------------------------------

    def training_params(self) -> SFTParams:
        """The rendered training parameters, validated (raises ``InvalidParameterError``).

        A relative ``base_model`` path (``./models/x``) is relative to the workspace, like the
        dataset paths; ``org/name`` stays a HuggingFace id.
        """
        values = {name: getattr(self, name) for name in TRAINING_PARAMETERS}
        base_model = values.get("base_model")
        if isinstance(base_model, str) and base_model.startswith(("./", "../")):
            values["base_model"] = os.path.normpath(Path(self.pod_workspace()) / base_model)
        return SFTParams.parse(values)

    def _run_name(self, context: Any) -> str:
        if self.run_name:
            return str(self.run_name)
        return dag_run_dir_name(self, context)  # the DAG run's directory: its dataset is there too

    def pod_workspace(self) -> str:
        """The workspace root as the training process sees it; never ``/``, a system or a home directory."""
        return workspace_root(self.backend, self.workspace_mode, self.workspace, self.pvc_mount_path)

    def build_run(self, context: Any) -> TrainingRun:
        name = self._run_name(context)
        params = self.training_params()
        return TrainingRun(
            name=name,
            params=params,
            dataset_path=str(self.dataset_path),
            output_dir=str(Path(self.pod_workspace()) / c.RUNS_DIR / name),
            device=Device(self.device),
            max_dropped_fraction=checked_max_dropped_fraction(self.max_dropped_fraction),
            # unset (None, or an empty form field): the default
            resume=checked_resume(self.resume or c.DEFAULT_RESUME),
            checkpoint_grace_seconds=checked_checkpoint_grace_seconds(
                self.checkpoint_grace_seconds, base_model=params.base_model
            ),
        )

    def kubernetes_settings(self) -> dict[str, Any]:
        """The rendered Kubernetes parameters (``KubernetesConfig`` fields)."""
        return {
            **{name: getattr(self, name) for name in KUBERNETES_PARAMETERS},
            "workspace_mount_path": self.pod_workspace(),
            "spec_generation": self.spec_generation,
            "image": self.image,
            "keep_failed_jobs": self.keep_failed_jobs,
            "delete_on_success": self.delete_on_success,
        }

    def backend_config(self) -> BackendConfig:
        """The rendered ``backend`` and its settings as the config that chooses the backend."""
        return backend_config(self.backend, self.kubernetes_conn_id, self.kubernetes_settings())

    def _credentials(self) -> Credentials:
        from airflow_provider_sft.hooks.huggingface import HuggingFaceHook

        token = HuggingFaceHook(self.hf_conn_id or None).get_token()  # no connection id: $HF_TOKEN
        from airflow_provider_sft.core.backends.kubernetes.pull_secret import oci_pull_secret

        return Credentials(hf_token=token, oci_pull_secret=oci_pull_secret())

    def _backend_for(self, context: Any) -> TrainingBackend:
        credentials = self._credentials()  # a bad pull secret is reported first, on every backend
        return connected_backend(
            self.backend_config(), conn_id=self.kubernetes_conn_id, context=context, credentials=credentials
        )

    # --- Airflow hooks ------------------------------------------------------------------

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        mask_secret_envs(self.envs)  # before Airflow stores Rendered Templates or logs a line

    def execute(self, context: Any) -> dict[str, Any]:
        with bad_input_is_final():  # a bad parameter is not retried
            return self._execute(context)

    def _execute(self, context: Any) -> dict[str, Any]:
        run = self.build_run(context)  # validates every parameter before anything starts
        backend = self._backend_for(context)
        self.log.info("Training run %s on the %s backend -> %s", run.name, backend.name.value, run.output_dir)
        timeout = self.execution_timeout.total_seconds() if self.execution_timeout else None
        self._backend, self._handle = backend, backend.handle(run.name, run.output_dir)
        handle = self._handle = backend.submit(run, timeout_seconds=timeout)  # preflight first
        self._stop_if_killed(backend, handle)  # a kill during submit may have come before the create
        context["ti"].xcom_push(key=TRAINING_JOB_XCOM_KEY, value=handle.to_dict())
        if self.deferrable and not backend.deferrable:
            self.log.warning(
                "deferrable=True has no effect on the %s backend: training runs as a child process of "
                "this worker, so the task keeps its worker slot until training ends",
                backend.name.value,
            )
        if self.deferrable and backend.deferrable:
            result = backend.poll(handle)
            if not result.ended:
                self._defer(handle, timeout)
            return self._complete(backend, handle, backend.complete(handle, result, on_log=log_training_line))
        result = backend.wait(
            handle,
            on_log=log_training_line,
            timeout_seconds=timeout,
            on_progress=self._progress_sink(context, handle.name),
        )
        self._stop_if_killed(backend, handle)
        return self._complete(backend, handle, result)

    def _progress_sink(self, context: Any, run_name: str) -> ProgressSink:
        """A progress line in the task log, and the progress as the ``training_progress`` XCom, which
        the Training results tab shows while the task runs (as the trigger does when deferred)."""
        ti = context["ti"]

        def say(tracker: LiveProgress) -> None:
            assert tracker.said is not None
            self.log.info("%s", progress_text(tracker.said))
            payload = tracker.payload(run_name, updated=SYSTEM_CLOCK.now().isoformat())
            ti.xcom_push(key=PROGRESS_XCOM_KEY, value=payload)

        return say

    def _stop_if_killed(self, backend: TrainingBackend, handle: JobHandle) -> None:
        """End the task after ``on_kill``: Airflow's SIGTERM handler returns into the task.

        Cancelled again here: a kill during submit may have deleted before the create landed.
        """
        if not self._killed:
            return
        from airflow_provider_sft.compat import AirflowTaskTerminated

        backend.cancel(handle)
        kind = handle.kind or "run"
        raise AirflowTaskTerminated(f"Training run {handle.name} was killed; its {kind} was deleted")

    def _defer(self, handle: JobHandle, timeout_seconds: float | None) -> None:
        from airflow_provider_sft.triggers.training_job import TrainingJobTrigger
        from airflow_provider_sft.version_compat import AIRFLOW_V_3_3_PLUS

        if not AIRFLOW_V_3_3_PLUS:
            self.log.warning(
                "Airflow 3.3+ tells a deferred task's trigger that the task was killed; this Airflow does not: "
                "killing this task while it waits leaves %s %s/%s running (delete it yourself, or set "
                "deferrable=False to have a kill delete it)",
                handle.kind,
                handle.namespace,
                handle.name,
            )

        now = SYSTEM_CLOCK.now()
        deadline = start_deadline = None
        if timeout_seconds is not None:
            deadline = (now + timedelta(seconds=timeout_seconds)).isoformat()
        start_timeout_seconds = float(self.start_timeout_seconds) if self.start_timeout_seconds else None
        if start_timeout_seconds is not None:
            start_deadline = (now + timedelta(seconds=start_timeout_seconds)).isoformat()
        self.defer(
            trigger=TrainingJobTrigger(
                job=handle.to_dict(),
                kubernetes_conn_id=self.kubernetes_conn_id,
                deadline=deadline,
                start_deadline=start_deadline,
                start_timeout_seconds=start_timeout_seconds,
            ),
            method_name="execute_complete",
            timeout=None
            if timeout_seconds is None
            else timedelta(seconds=timeout_seconds) + DEFERRAL_TIMEOUT_MARGIN,
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger, on the coordinates its event carries: log tail, clean-up, result."""
        trainjob_event = validate_event(event)
        handle = JobHandle.from_dict(trainjob_event.job)
        backend = self._backend_for(context)
        self._backend, self._handle = backend, handle  # a kill from here on deletes it too
        if trainjob_event.status is EventStatus.ERROR:
            kind = handle.kind
            backend.cancel(handle)  # we cannot follow it any more: it must not run on unobserved
            raise TrainingFailedError(
                f"Lost track of {kind} {handle.name}: {trainjob_event.message}; the {kind} was deleted"
            )
        result = backend.complete(handle, trainjob_event.job_result(), on_log=log_training_line)
        return self._complete(backend, handle, result)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        """Also clean up when Airflow itself ends the deferral (its trigger timeout, a trigger crash).

        Those never reach ``execute_complete``: Airflow raises ``TaskDeferralTimeout`` or
        ``TaskDeferralError`` from here instead, and the TrainJob would keep its GPUs.
        """
        from airflow_provider_sft.compat import TaskDeferralError, TaskDeferralTimeout

        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except (TaskDeferralTimeout, TaskDeferralError):
            job = context["ti"].xcom_pull(task_ids=self.task_id, key=TRAINING_JOB_XCOM_KEY)
            if job:
                handle = JobHandle.from_dict(job)
                self.log.warning(
                    "The deferral ended without an event: deleting %s %s",
                    handle.kind,
                    handle.name,
                )
                self._backend_for(context).cancel(handle)
            raise

    def _complete(self, backend: TrainingBackend, handle: JobHandle, result: JobResult) -> dict[str, Any]:
        if result.status is JobStatus.TIMED_OUT:
            raise TrainingTimeoutError(f"Training run {handle.name} timed out: {result.message}")
        if not result.succeeded:
            raise TrainingFailedError(f"Training run {handle.name} failed: {result.message}")
        base_model = self.base_model or c.DEFAULT_BASE_MODEL
        self.record_lineage(
            inputs=[(self.dataset_path, "datasets"), (base_model, "models")],
            outputs=[(handle.output_dir, "models")],
        )
        return {
            "run_name": handle.name,
            "backend": backend.name.value,
            "output_dir": handle.output_dir,
            "metrics_path": str(Path(handle.output_dir) / c.METRICS_FILE),
            "job_created": handle.created,  # the export's time to the first step counts from it
        }

    def on_kill(self) -> None:
        """Delete the job. Airflow calls this from its SIGTERM handler, in the middle of the submit,
        the wait, or (``airflow dags test``) the trigger run in the task's process, and after an
        ``execution_timeout``; the backend's ``cancel`` is safe there. Never raises into the
        interrupted code: a failed delete is logged."""
        self._killed = True
        if self._backend is None or self._handle is None:
            return
        self.log.info("Task killed: cancelling training run %s", self._handle.name)
        try:
            self._backend.cancel(self._handle)
        except Exception:
            self.log.exception("Could not cancel training run %s", self._handle.name)

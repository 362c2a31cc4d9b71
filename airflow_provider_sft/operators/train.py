"""``SFTTrainOperator``: one SFT training run on a backend, orchestration only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.configuration import conf
from airflow.sdk import BaseOperator

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends import (
    BackendName,
    JobHandle,
    JobResult,
    JobStatus,
    TrainingBackend,
    get_backend,
)
from airflow_provider_sft.core.backends.kubernetes import Credentials, KubernetesBackend
from airflow_provider_sft.core.clock import SYSTEM_CLOCK
from airflow_provider_sft.core.errors import TrainingFailedError, TrainingTimeoutError
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.run import Device, TrainingRun, run_name
from airflow_provider_sft.core.trainjob import JobPhase, JobState, KubernetesOptions, SpecGeneration
from airflow_provider_sft.lineage import LineageMixin
from airflow_provider_sft.links import TrainJobConsoleLink
from airflow_provider_sft.triggers.events import EventStatus, validate_event

#: The training parameters, in the seed component's order (names without ``training_``).
TRAINING_PARAMETERS: tuple[str, ...] = tuple(SFTParams.model_fields)


class SFTTrainOperator(LineageMixin, BaseOperator):
    """Fine-tune a causal LM with SFT (instructlab-training) on a backend.

    Every training parameter of the seed "SFT Training Component" is an argument
    here, named without its ``training_`` prefix; ``None`` means the seed's default
    (see :class:`~airflow_provider_sft.core.params.SFTParams`). All of them, and the
    paths, are templated. Parameters are validated after rendering and before
    anything starts; a bad value fails the task with a message naming it.

    :param dataset_path: chat JSONL to train on, e.g. the ``path`` XCom of
        :class:`ResolveDatasetOperator`. (templated)
    :param workspace: workspace root; the run writes to ``<workspace>/runs/<run name>/``. (templated)
    :param backend: ``"local"`` (this machine; CUDA when present, else the CPU loop) or
        ``"kubernetes"`` (a Kubeflow Trainer TrainJob). (templated)
    :param run_name: name of the run; default derived from dag id, run id, task id and
        map index, so a retry of the same task reuses the name. (templated)
    :param device: ``"auto"``, ``"cpu"`` or ``"cuda"`` for the local backend.

    Kubernetes backend (a Kubeflow Trainer TrainJob; ``workspace`` is then the PVC's mount path
    in the training pod):

    :param kubernetes_conn_id: a cncf.kubernetes ``kubernetes`` connection. ``KUBERNETES_SERVER_URL``
        and ``KUBERNETES_AUTH_TOKEN`` in the environment take precedence, as in the KFP component.
    :param namespace: namespace of the TrainJob; default: the connection's, else ``default``. (templated)
    :param runtime_name: ClusterTrainingRuntime to run on (``training-hub`` on OpenShift AI,
        ``torch-distributed`` upstream). (templated)
    :param pvc_name: the workspace PersistentVolumeClaim mounted at ``workspace``. (templated)
    :param spec_generation: ``"auto"`` (read the served CRD), ``"v2.1"`` or ``"v2.2"``.
    :param image: trainer image override; ``package_spec``: what the pod pip-installs to get this
        provider's entrypoint (``None`` when the image already has it).
    :param hf_conn_id: a ``huggingface`` connection (its password is the token); default: ``HF_TOKEN``
        from the worker's environment. ``OCI_PULL_SECRET_MODEL_DOWNLOAD`` is read from the
        environment. Both reach the pod through a Secret owned by the TrainJob, never the spec.
    :param deferrable: wait in the triggerer (default: ``[operators] default_deferrable``).
    :param keep_failed_jobs: keep a failed TrainJob for debugging instead of deleting it.
    :param delete_on_success: delete the TrainJob (and its Secret) once it has succeeded.
    :param console_url_template: URL of a TrainJob in the cluster console, with ``{namespace}``
        and ``{name}`` placeholders, for the task's extra link.

    Returns (XCom) ``run_name``, ``backend``, ``output_dir`` and ``metrics_path``; the
    job coordinates are also pushed as the ``training_job`` XCom as soon as it starts.
    """

    template_fields: Sequence[str] = (
        "dataset_path",
        "workspace",
        "backend",
        "run_name",
        "namespace",
        "runtime_name",
        "pvc_name",
        "hf_conn_id",
        *TRAINING_PARAMETERS,
    )
    template_fields_renderers = {"envs": "json", "metadata_labels": "json", "metadata_annotations": "json"}
    ui_color = "#f4ecf7"
    operator_extra_links = (TrainJobConsoleLink(),)

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
        kubernetes_conn_id: str | None = "kubernetes_default",
        namespace: str | None = None,
        runtime_name: str = c.DEFAULT_RUNTIME,
        pvc_name: str | None = None,
        spec_generation: str = SpecGeneration.AUTO.value,
        image: str | None = None,
        package_spec: str | None = "airflow-provider-sft",
        hf_conn_id: str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        keep_failed_jobs: bool = False,
        delete_on_success: bool = True,
        console_url_template: str | None = None,
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
        self.kubernetes_conn_id = kubernetes_conn_id
        self.namespace = namespace
        self.runtime_name = runtime_name
        self.pvc_name = pvc_name
        self.spec_generation = SpecGeneration(spec_generation)  # checked now: not templated
        self.image = image
        self.package_spec = package_spec
        self.hf_conn_id = hf_conn_id
        self.deferrable = deferrable
        self.keep_failed_jobs = keep_failed_jobs
        self.delete_on_success = delete_on_success
        self.console_url_template = console_url_template
        self._backend: TrainingBackend | None = None
        self._handle: JobHandle | None = None

    # --- helpers -------------------------------------------------------------------

    def training_params(self) -> SFTParams:
        """The rendered training parameters, validated (raises ``InvalidParameterError``)."""
        return SFTParams.parse({name: getattr(self, name) for name in TRAINING_PARAMETERS})

    def _run_name(self, context: Any) -> str:
        if self.run_name:
            return str(self.run_name)
        ti = context["ti"]
        return run_name(ti.dag_id, context["run_id"], ti.task_id, getattr(ti, "map_index", -1))

    def build_run(self, context: Any) -> TrainingRun:
        name = self._run_name(context)
        return TrainingRun(
            name=name,
            params=self.training_params(),
            dataset_path=str(self.dataset_path),
            output_dir=str(Path(self.workspace) / c.RUNS_DIR / name),
            device=Device(self.device),
        )

    def kubernetes_backend(self, context: Any | None = None) -> KubernetesBackend:
        from airflow_provider_sft.hooks.sft import SFTTrainingHook

        hook = SFTTrainingHook(kubernetes_conn_id=self.kubernetes_conn_id)
        ti = context["ti"] if context else None
        run_labels = {}
        if ti is not None:
            run_labels = {
                c.LABEL_DAG_ID: ti.dag_id,
                c.LABEL_TASK_ID: ti.task_id,
                c.LABEL_RUN_ID: context["run_id"],
                c.LABEL_MAP_INDEX: str(getattr(ti, "map_index", -1)),
            }
        return KubernetesBackend(
            client=hook.get_conn(),
            options=KubernetesOptions(
                namespace=self.namespace or hook.get_namespace() or "default",
                runtime_name=self.runtime_name,
                pvc_name=self.pvc_name,
                workspace_mount_path=str(self.workspace),
                spec_generation=self.spec_generation,
                image=self.image,
                package_spec=self.package_spec,
            ),
            credentials=self._credentials(),
            run_labels=run_labels,
            keep_failed=self.keep_failed_jobs,
            delete_on_success=self.delete_on_success,
        )

    def _credentials(self) -> Credentials:
        from airflow_provider_sft.hooks.huggingface import HuggingFaceHook

        token = HuggingFaceHook(self.hf_conn_id or None).get_token()  # no connection id: $HF_TOKEN
        return Credentials(hf_token=token, oci_pull_secret=os.environ.get(c.OCI_PULL_SECRET_ENV) or None)

    def _backend_for(self, context: Any) -> TrainingBackend:
        if BackendName(self.backend) is BackendName.KUBERNETES:
            return self.kubernetes_backend(context)
        credentials = self._credentials()
        secret_env = {c.HF_TOKEN_ENV: credentials.hf_token} if credentials.hf_token else {}
        return get_backend(self.backend, secret_env=secret_env)

    # --- Airflow hooks ------------------------------------------------------------------

    def execute(self, context: Any) -> dict[str, Any]:
        run = self.build_run(context)  # validates every parameter before anything starts
        backend = self._backend_for(context)
        self.log.info("Training run %s on the %s backend -> %s", run.name, backend.name.value, run.output_dir)
        self._backend = backend
        self._handle = backend.submit(run)  # preflight first: nothing starts on bad input
        context["ti"].xcom_push(key="training_job", value=self._handle.to_json_dict())
        timeout = self.execution_timeout.total_seconds() if self.execution_timeout else None
        if isinstance(backend, KubernetesBackend) and self.deferrable:
            state, _ = backend.state(self._handle)
            if not state.terminal:
                self._defer(backend, timeout)
            return self._complete(backend, self._handle, backend.finish(self._handle, state, self.log.info))
        result = backend.wait(self._handle, on_log=self.log.info, timeout_seconds=timeout)
        return self._complete(backend, self._handle, result)

    def _defer(self, backend: KubernetesBackend, timeout_seconds: float | None) -> None:
        from airflow_provider_sft.triggers.trainjob import TrainJobTrigger

        deadline = None
        if timeout_seconds is not None:
            deadline = (SYSTEM_CLOCK.now() + timedelta(seconds=timeout_seconds)).isoformat()
        self.defer(
            trigger=TrainJobTrigger(
                name=self._handle.name,
                namespace=backend.options.namespace,
                kubernetes_conn_id=self.kubernetes_conn_id,
                deadline=deadline,
            ),
            method_name="execute_complete",
            timeout=None if timeout_seconds is None else timedelta(seconds=timeout_seconds),
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger: copy the pod log tail, clean up by policy, return or raise."""
        trainjob_event = validate_event(event)
        run = self.build_run(context)
        backend = self.kubernetes_backend(context)
        handle = backend.handle(run.name, run.output_dir)
        if trainjob_event.status is EventStatus.ERROR:
            raise TrainingFailedError(f"Lost track of TrainJob {handle.name}: {trainjob_event.message}")
        state = {
            EventStatus.SUCCESS: JobState(JobPhase.SUCCEEDED, trainjob_event.reason, trainjob_event.message),
            EventStatus.FAILED: JobState(JobPhase.FAILED, trainjob_event.reason, trainjob_event.message),
            EventStatus.TIMEOUT: None,
        }[trainjob_event.status]
        return self._complete(backend, handle, backend.finish(handle, state, self.log.info))

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
        }

    def on_kill(self) -> None:
        if self._backend is not None and self._handle is not None:
            self.log.info("Cancelling training run %s", self._handle.name)
            self._backend.cancel(self._handle)

"""``SFTTrainOperator``: one SFT training run on a backend, orchestration only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends import JobHandle, JobStatus, TrainingBackend, get_backend
from airflow_provider_sft.core.errors import TrainingFailedError, TrainingTimeoutError
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.run import Device, TrainingRun, run_name

#: The training parameters, in the seed component's order (names without ``training_``).
TRAINING_PARAMETERS: tuple[str, ...] = tuple(SFTParams.model_fields)


class SFTTrainOperator(BaseOperator):
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

    Returns (XCom) ``run_name``, ``backend``, ``output_dir`` and ``metrics_path``; the
    job coordinates are also pushed as the ``training_job`` XCom as soon as it starts.
    """

    template_fields: Sequence[str] = (
        "dataset_path",
        "workspace",
        "backend",
        "run_name",
        *TRAINING_PARAMETERS,
    )
    template_fields_renderers = {"envs": "json", "metadata_labels": "json", "metadata_annotations": "json"}
    ui_color = "#f4ecf7"

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

    # --- Airflow hooks ------------------------------------------------------------------

    def execute(self, context: Any) -> dict[str, Any]:
        run = self.build_run(context)  # validates every parameter before anything starts
        backend = get_backend(self.backend)
        self.log.info("Training run %s on the %s backend -> %s", run.name, backend.name.value, run.output_dir)
        self._backend = backend
        self._handle = backend.submit(run)  # preflight first: nothing starts on bad input
        context["ti"].xcom_push(key="training_job", value=self._handle.to_json_dict())
        timeout = self.execution_timeout.total_seconds() if self.execution_timeout else None
        result = backend.wait(self._handle, on_log=self.log.info, timeout_seconds=timeout)
        if result.status is JobStatus.TIMED_OUT:
            raise TrainingTimeoutError(f"Training run {run.name} timed out: {result.message}")
        if not result.succeeded:
            raise TrainingFailedError(f"Training run {run.name} failed: {result.message}")
        return {
            "run_name": run.name,
            "backend": backend.name.value,
            "output_dir": run.output_dir,
            "metrics_path": str(Path(run.output_dir) / c.METRICS_FILE),
        }

    def on_kill(self) -> None:
        if self._backend is not None and self._handle is not None:
            self.log.info("Cancelling training run %s", self._handle.name)
            self._backend.cancel(self._handle)

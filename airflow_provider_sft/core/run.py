"""One training run: what the entrypoint is asked to do, and where.

A :class:`TrainingRun` is written as ``run_config.json`` into the run's own
directory (``<workspace>/runs/<name>/``) and handed to the entrypoint, locally
or in the training pod. Every run gets its own directory because
instructlab-training resumes from any ``full_state/`` it finds in its output
directory: a reused directory would silently continue an old run.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.files import atomic_write_bytes
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.training.resume import checked_resume

_NAME_UNSAFE = re.compile(r"[^a-z0-9-]+")


class Device(str, Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


#: An Airflow run id: ``manual__2026-12-05T09:06:04.123456+00:00[_random]``.
_AIRFLOW_RUN_ID = re.compile(r"^(?P<kind>[a-z_]+?)__(?P<date>\d{4}-\d{2}-\d{2})T(?P<time>\d{2}:\d{2}:\d{2})")


def readable_run_id(run_id: str) -> str:
    """An Airflow run id as a name part: ``manual__2026-12-05T09:06:04...`` -> ``manual-20261205-090604``.

    Cutting the raw id at a length limit left ``manual-2026-12-0``: every December run alike.
    Kind, date and time to the second fit; what is dropped (microseconds, the random suffix)
    stays in the name's hash. Other run ids (a REST caller's own) are kept as they are.
    """
    match = _AIRFLOW_RUN_ID.match(run_id)
    if not match:
        return run_id
    return "-".join(
        (match["kind"].replace("_", "-"), match["date"].replace("-", ""), match["time"].replace(":", ""))
    )


def run_name(*parts: str | int | None, max_length: int = 40) -> str:
    """A deterministic DNS-1123 name from identifying parts, most distinctive first.

    Readable prefix (cut at the end when too long, so put what tells runs apart first), then a
    hash of all parts so different runs never collide even when the prefix is truncated or
    sanitised to the same text. Airflow run ids are shortened by :func:`readable_run_id`.
    """
    text = "|".join("" if part is None else str(part) for part in parts)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    words = (readable_run_id(p) if isinstance(p, str) else str(p) for p in parts if p not in (None, ""))
    readable = _NAME_UNSAFE.sub("-", "-".join(words).lower()).strip("-")
    readable = readable[: max_length - len(digest) - 1].strip("-") or "sft"
    if not readable[0].isalpha():
        readable = f"sft-{readable}"[: max_length - len(digest) - 1].strip("-")
    return f"{readable}-{digest}"


def dag_run_name(dag_id: str, run_id: str, map_index: int = -1, *, step: str | None = None) -> str:
    """The name of one DAG run's work: ``manual-20261205-090604-<dag id>-<hash>``.

    Without ``step``: the DAG run's run directory (``runs/<name>/``, holding its dataset, model,
    metrics and chart) and its training job. With ``step`` (a task id): that step's own job
    name, so the resolve and export jobs never take the training job's name. The run id comes
    first, so ``ls runs/`` lists runs by time and a long DAG id is what gets cut. A mapped task
    instance (``map_index`` >= 0) is a run of its own.
    """
    return run_name(run_id, step, None if map_index < 0 else f"m{map_index}", dag_id)


_RUN_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_LABEL_MAX = 63  # a pod's hostname and a Service's name are DNS labels
#: JobSet's webhook checks a pod name with this stand-in for the Job controller's random suffix.
JOBSET_POD_SUFFIX = "-abcde"


def pod_name_suffix(num_nodes: int) -> str:
    """The longest suffix a controller appends to a job's name for one of its pods.

    JobSet names a TrainJob's pods ``<jobset>-<replicatedJob>-<jobIndex>-<podIndex>-<5 random>``
    (the JobSet is named after the TrainJob), and its webhook refuses a JobSet whose longest pod
    name (the ``node`` job's: ``-node-0-<num_nodes - 1>-abcde``) exceeds 63 characters, after
    the TrainJob was admitted. The Training Operator names a PyTorchJob's pods and Services
    ``<name>-master-0`` and ``<name>-worker-<i>``, always shorter than that. A runtime's other
    replicated jobs (initializers) are checked against the runtime itself: ``admission``.
    """
    return f"-{c.NODE}-0-{max(num_nodes, 1) - 1}{JOBSET_POD_SUFFIX}"


def max_run_name_length(num_nodes: int = 1) -> int:
    """The longest run name whose pods' names still fit in a DNS label (48 for up to 10 nodes)."""
    return DNS_LABEL_MAX - len(pod_name_suffix(num_nodes))


def check_run_name(name: str, *, field: str = "run_name", num_nodes: int = 1) -> str:
    """A run name is a DNS-1123 label short enough for its job's pod names: never a path.

    Checked with the run's node count before anything is submitted, so a long name is refused
    here rather than by the JobSet webhook after the TrainJob was admitted.
    """
    limit = max_run_name_length(num_nodes)
    if not isinstance(name, str) or not _RUN_NAME.match(name):
        raise InvalidParameterError(
            {
                field: f"must be a DNS-1123 label of at most {limit} characters (lowercase letters, "
                f"digits and '-', starting with a letter), got {name!r}"
            }
        )
    if len(name) > limit:
        nodes = f" with resource_num_workers={num_nodes}" if num_nodes > 1 else ""
        raise InvalidParameterError(
            {
                field: f"must be at most {limit} characters{nodes}, got {len(name)} ({name!r}): the job's "
                f"pods are named {name}{pod_name_suffix(num_nodes)}, longer than the {DNS_LABEL_MAX} "
                "characters of a DNS label"
            }
        )
    return name


@dataclass(frozen=True)
class TrainingRun:
    """Inputs and output location of one training run."""

    name: str
    params: SFTParams
    dataset_path: str
    output_dir: str
    device: Device = Device.AUTO
    extra: dict[str, Any] = field(default_factory=dict)
    # Names one submission of the run: the nodes of a multi-node job tell a marker written by
    # this attempt's node 0 from one an earlier attempt left on the PVC.
    attempt: str = ""
    # The gate on samples the length filters drop, when the pod processes the data itself.
    max_dropped_fraction: float = c.DEFAULT_MAX_DROPPED_FRACTION
    # "auto": a new attempt continues from the newest complete saved state of this same run
    # (after a preemption, a suspension or a task retry); "never": it starts clean.
    resume: str = c.DEFAULT_RESUME
    # The pods' terminationGracePeriodSeconds: time to save a full state after SIGTERM (a preemption).
    checkpoint_grace_seconds: int = c.DEFAULT_CHECKPOINT_GRACE_SECONDS

    def __post_init__(self) -> None:
        check_run_name(self.name, num_nodes=self.params.resource_num_workers)
        checked_resume(self.resume)

    @property
    def processed_data_dir(self) -> str:
        return self.params.data_output_dir or str(Path(self.output_dir) / c.PROCESSED_DIR)

    @property
    def config_path(self) -> Path:
        return Path(self.output_dir) / c.RUN_CONFIG_FILE

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": self.params.to_json_dict(),
            "dataset_path": self.dataset_path,
            "output_dir": self.output_dir,
            "device": self.device.value,
            "extra": self.extra,
            "attempt": self.attempt,
            "max_dropped_fraction": self.max_dropped_fraction,
            "resume": self.resume,
            "checkpoint_grace_seconds": self.checkpoint_grace_seconds,
        }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> TrainingRun:
        return cls(
            name=data["name"],
            params=SFTParams.parse(data["params"]),
            dataset_path=data["dataset_path"],
            output_dir=data["output_dir"],
            device=Device(data.get("device", "auto")),
            extra=data.get("extra", {}),
            attempt=data.get("attempt", ""),
            max_dropped_fraction=data.get("max_dropped_fraction", c.DEFAULT_MAX_DROPPED_FRACTION),
            resume=data.get("resume", c.DEFAULT_RESUME),
            checkpoint_grace_seconds=data.get("checkpoint_grace_seconds", c.DEFAULT_CHECKPOINT_GRACE_SECONDS),
        )

    def write_config(self) -> Path:
        return atomic_write_bytes(self.config_path, jsonio.dumps(self.to_json_dict(), indent=True))

    @classmethod
    def read_config(cls, path: str | Path) -> TrainingRun:
        return cls.from_json_dict(jsonio.loads(Path(path).read_bytes()))


def cuda_device_count() -> int:
    """CUDA devices this process can use (0 without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class DevicePlan:
    """How the entrypoint will train on this machine."""

    device: Device
    processes: int
    cpu_threads: int
    notes: tuple[str, ...] = ()


def plan_device(params: SFTParams, *, requested: Device, cuda_devices: int, cpu_count: int) -> DevicePlan:
    """Decide CPU or CUDA for a single worker; reject parameters this machine cannot honour.

    Raises :class:`InvalidParameterError` naming the parameter, before any work.
    """
    errors: dict[str, str] = {}
    wants_gpu = params.resource_gpu_per_worker > 0
    device = requested
    if device is Device.AUTO:
        device = Device.CUDA if wants_gpu and cuda_devices > 0 else Device.CPU
    if wants_gpu and device is Device.CPU:
        errors["resource_gpu_per_worker"] = (
            f"asks for {params.resource_gpu_per_worker} GPU(s) but this machine has {cuda_devices} CUDA device(s); "
            "set it to 0 to train on the CPU"
        )
    if device is Device.CUDA and params.resource_gpu_per_worker > cuda_devices:
        errors["resource_gpu_per_worker"] = (
            f"asks for {params.resource_gpu_per_worker} GPU(s) but only {cuda_devices} CUDA device(s) are visible"
        )
    if device is Device.CUDA and params.resource_gpu_per_worker == 0:
        errors["resource_gpu_per_worker"] = "must be >= 1 to train on CUDA, got 0"
    procs = params.resource_num_procs_per_worker
    if device is Device.CPU:
        if params.use_liger:
            errors["use_liger"] = "Liger kernels need CUDA; set use_liger=false to train on the CPU"
        if procs != "auto" and procs != 1:
            errors["resource_num_procs_per_worker"] = f"the CPU trainer runs one process, got {procs}"
        processes = 1
    else:
        processes = params.resource_gpu_per_worker if procs == "auto" else int(procs)
    if errors:
        raise InvalidParameterError(errors)
    threads = max(1, min(cpu_count, math.floor(params.cpu_cores)))
    notes = []
    if params.metadata_labels or params.metadata_annotations:
        notes.append(
            "metadata_labels/metadata_annotations label Kubernetes pods; a local run records them in "
            "run_config.json only"
        )
    if (
        device is Device.CPU
        and params.fsdp_sharding_strategy != SFTParams.model_fields["fsdp_sharding_strategy"].default
    ):
        notes.append(
            f"fsdp_sharding_strategy={params.fsdp_sharding_strategy.value} applies to multi-GPU FSDP; "
            "the single CPU process holds the whole model"
        )
    return DevicePlan(device=device, processes=processes, cpu_threads=threads, notes=tuple(notes))

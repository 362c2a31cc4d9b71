"""The program of the training pod and of the local backend's process.

    python -m airflow_provider_sft.core.pod.entrypoint train RUN_CONFIG_JSON
    python program.pyz {train,resolve,prepare,export} CONFIG_JSON      (in a pod: see program.py)

``train``:

1. reuses the data the ``prepare`` step tokenized on a CPU before the job, when its
   fingerprint matches (no node processes, none waits); else node 0 tokenizes it with
   instructlab-training's data processing, counts what it dropped and applies the gate,
   while the other nodes wait for its marker;
2. trains: on CUDA with instructlab-training's ``main_ds`` under torchrun, every
   parameter mapped (see :mod:`instructlab_command`); on a CPU with the loop in
   :mod:`cpu_trainer`, which writes the same files (over gloo on several nodes).

``resolve``, ``prepare`` and ``export`` are the workspace steps of :mod:`steps`; their result is
printed as the last line (``SFT_RESULT {...}``).

Its own lines start with ``[sft] `` (``[sft node i/n] `` on several nodes): those are what the
Airflow task log shows of the output (see :mod:`protocol`); the rest, libraries included, is
kept in full (``train.log`` locally, the pod log on Kubernetes).

Exit status 0 means success; anything else is a failure whose reason is the last
line of the output, ``ERROR: ...``. Only the standard library, torch, transformers and
instructlab-training (with their dependencies) may be imported here: it is what the
training image has.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.errors import PreemptedError, SFTError, TrainingFailedError
from airflow_provider_sft.core.files import atomic_write_bytes
from airflow_provider_sft.core.pod.protocol import (
    PREFIX,
    WARNING_MARK,
    error_line,
    missing_module,
    node_prefix,
    result_line,
)
from airflow_provider_sft.core.run import Device, TrainingRun, cuda_device_count, plan_device
from airflow_provider_sft.core.training.nodes import (
    Topology,
    clear_data_ready,
    mark_data_ready,
    wait_for_data,
)
from airflow_provider_sft.core.training.resume import SavedState

if TYPE_CHECKING:
    from airflow_provider_sft.core.training.trainer_status import TrainerStatusReporter

_PREFIX = PREFIX


def _log(message: str) -> None:
    print(f"{_PREFIX}{message}", flush=True)


def _flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def default_cache_env(run_dir: Path) -> dict[str, str]:
    """The caches that must be writable per run, under it unless already set: Triton's only.

    The Hugging Face cache and stored token stay the user's (``HF_HOME`` is not touched): a
    run must not download the base model again into a folder nobody cleans, nor lose the
    ``hf auth login`` token. In a pod the TrainJob sets ``HF_HOME`` on the PVC itself.
    """
    return {"TRITON_CACHE_DIR": str(run_dir / ".cache" / "triton")}


def _check_writable(directory: Path) -> None:
    """Fail early, naming the directory, when the workspace is not writable by this UID."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TrainingFailedError(
            f"cannot write the run directory {directory}: {exc.strerror or exc} (uid {os.getuid()}, gid "
            f"{os.getgid()}). The workspace PVC must be writable by the pod's user: give the volume group "
            "write access for the pod's fsGroup or GID 0, or a StorageClass that does"
        ) from None


def _check_base_model(model: str) -> None:
    """A local base model that is not there is named before the libraries fail on it."""
    if model.startswith(("/", "./", "../")) and not Path(model).is_dir():
        raise TrainingFailedError(
            f"base_model {model} does not exist: a local base model must be a directory this process "
            "can read (in a pod: on a volume the node container mounts, such as the workspace PVC), or "
            "use a HuggingFace model id"
        )


def run(training_run: TrainingRun) -> None:
    global _PREFIX
    started = time.monotonic()
    started_at = datetime.now(timezone.utc)
    params = training_run.params
    output_dir = Path(training_run.output_dir)
    topology = Topology.from_env()
    _PREFIX = node_prefix(topology.node_rank, topology.num_nodes)
    _prepare_output_dir(output_dir, params.base_model)

    plan = plan_device(
        params, requested=training_run.device, cuda_devices=cuda_device_count(), cpu_count=os.cpu_count() or 1
    )
    _log(
        f"run {training_run.name}: device {plan.device.value}, {plan.processes} process(es), base model {params.base_model}"
    )
    for note in plan.notes:
        _log(note)

    report = _training_data(training_run, plan.cpu_threads, topology)
    if topology.is_first:  # the report of the data this run trains on, kept with its metrics
        atomic_write_bytes(output_dir / c.DATA_REPORT_FILE, jsonio.dumps(report, indent=True))

    resume_from = _resume_decision(training_run, plan.processes, topology)
    if topology.is_first:  # after the resume decision, which may start the metrics file anew
        _record_run_facts(training_run, plan.device, plan.processes, topology.num_nodes, started_at)
    if plan.device is Device.CUDA:
        _train_on_cuda(training_run, plan.processes, show_progress=topology.is_first)
    else:
        _train_on_cpu(training_run, report["processed_path"], plan.cpu_threads, topology, resume_from)
    if topology.is_first:  # node 0 writes the metrics
        _log(_summary_line(output_dir, params.base_model))
    _log(f"done in {time.monotonic() - started:.1f}s")


def _record_run_facts(
    training_run: TrainingRun, device: Device, processes: int, num_nodes: int, started_at: datetime
) -> None:
    """Append where this run trains (the GPU's name, nodes, GPUs per node) and what trains it
    (provider version, program and dataset sha256) to the metrics JSONL, an hparams line:
    instructlab's own cannot carry it, and the efficiency figures and the model card need it."""
    from airflow_provider_sft.core.pod.provenance import run_provenance
    from airflow_provider_sft.core.results.efficiency import cuda_device_name, facts_record

    output_dir = Path(training_run.output_dir)
    on_cuda = device is Device.CUDA
    record = facts_record(
        device=device.value,
        gpu_name=cuda_device_name() if on_cuda else None,
        num_nodes=num_nodes,
        gpus_per_node=processes if on_cuda else 0,
        started=started_at,
        provenance=run_provenance(training_run.dataset_path, training_run.processed_data_dir),
    )
    with (output_dir / c.METRICS_FILE).open("ab") as metrics:
        metrics.write(jsonio.dumps(record) + b"\n")


def _summary_line(output_dir: Path, base_model: str) -> str:
    """The run's summary line, with the efficiency figures this process can know (no job creation
    time: the time to the first step counts from the run's start; no cost: the export's parameter)."""
    from airflow_provider_sft.core.results.efficiency import run_efficiency
    from airflow_provider_sft.core.results.export import select_final_checkpoint
    from airflow_provider_sft.core.results.metrics import read_metrics_log, summarize_log
    from airflow_provider_sft.core.training.progress import summary_line

    metrics = read_metrics_log(output_dir / c.METRICS_FILE)
    try:
        model_dir: Path | None = select_final_checkpoint(output_dir)
    except SFTError:  # no complete checkpoint: the base model's config, when it is a directory
        model_dir = Path(base_model) if Path(base_model).is_dir() else None
    return summary_line(summarize_log(metrics), run_efficiency(metrics, model_dir=model_dir))


def _prepare_output_dir(output_dir: Path, base_model: str) -> None:
    """Check what can be checked before the first costly step, and keep caches in the run.

    An unwritable output directory or a missing base model fails here, in seconds, not after
    data processing.
    """
    _check_writable(output_dir)
    _check_base_model(base_model)
    for key, value in default_cache_env(output_dir).items():
        os.environ.setdefault(key, value)


def _resume_decision(training_run: TrainingRun, processes: int, topology: Topology) -> SavedState | None:
    """Node 0 decides what this attempt starts from, and says so in one line (see :mod:`resume`).

    After the data step, whose fingerprint is part of the run's identity, and before any node
    trains: the other nodes load a state only after the rendezvous with node 0 (gloo's on a
    CPU, torchrun's on CUDA), which comes after this.
    """
    if not topology.is_first:
        return None
    from airflow_provider_sft.core.training.resume import decide, run_identity

    params = training_run.params
    identity = run_identity(
        params,
        processed_dir=training_run.processed_data_dir,
        dataset_path=training_run.dataset_path,
        num_nodes=topology.num_nodes,
        processes_per_node=processes,
    )
    decision = decide(
        training_run.output_dir, identity, resume=training_run.resume, attempt=training_run.attempt
    )
    _log(decision.line)
    return decision.state


def _training_data(training_run: TrainingRun, cpu_threads: int, topology: Topology) -> dict[str, Any]:
    """The processed data's report: the data prepared before the job when its fingerprint matches
    (no node processes, none waits), else processed here by node 0 while the others wait.

    Reused data passes the gate too: node 0's processing records it before its gate runs, so a
    retry of a job the gate stopped would otherwise train on the data it refused.
    """
    from airflow_provider_sft.core.training.data_report import check_dropped
    from airflow_provider_sft.core.training.prepare import reusable

    params = training_run.params
    prepared, why = reusable(
        training_run.dataset_path,
        training_run.processed_data_dir,
        base_model=params.base_model,
        max_seq_len=params.max_seq_len,
        env=os.environ,
    )
    if prepared is not None:
        _log(
            f"data prepared before the job (fingerprint {prepared.to_dict()['fingerprint_id']}) is reused, "
            f"not processed again: {prepared.report.kept_samples} samples"
        )
        report = prepared.report.for_schedule(params.effective_batch_size, params.num_epochs)
        check_dropped(report, training_run.max_dropped_fraction)
        return report.to_dict()
    if not topology.is_first:
        _log(f"no prepared data to reuse ({why}): node 0 processes it")
        ready = wait_for_data(Path(training_run.processed_data_dir), training_run.attempt, log=_log)
        _log(f"using node 0's processed data: {ready['kept_samples']} samples")
        return ready
    _log(f"processing the data here: {why}")
    return _process_data(training_run, cpu_threads)


def _process_data(training_run: TrainingRun, cpu_threads: int) -> dict[str, Any]:
    """Node 0's instructlab data processing, the gate, then the marker the other nodes wait for.

    The marker is cleared first, so a node of this attempt never reads an earlier attempt's data.
    """
    from airflow_provider_sft.core.training.data_report import check_dropped
    from airflow_provider_sft.core.training.prepare import prepare_data

    params = training_run.params
    processed_dir = Path(training_run.processed_data_dir)
    with contextlib.suppress(ImportError):  # instructlab's logs reach the full output (it mutes them)
        from instructlab.training.logger import propagate_package_logs

        propagate_package_logs(True)
    clear_data_ready(processed_dir)
    report = prepare_data(
        training_run.dataset_path,
        processed_dir,
        base_model=params.base_model,
        max_seq_len=params.max_seq_len,
        effective_batch_size=params.effective_batch_size,
        num_epochs=params.num_epochs,
        num_cpu_procs=cpu_threads,
        env=os.environ,
    ).report
    _log((WARNING_MARK if report.dropped_samples else "") + f"data processing: {report.summary()}")
    check_dropped(report, training_run.max_dropped_fraction)
    mark_data_ready(processed_dir, training_run.attempt, report.to_dict())
    return report.to_dict()


def _train_on_cpu(
    training_run: TrainingRun,
    processed_path: str,
    threads: int,
    topology: Topology,
    resume_from: SavedState | None,
) -> None:
    """The CPU loop, on this node's share of every step (instructlab-training needs CUDA)."""
    from airflow_provider_sft.core.training.cpu_trainer import train_on_cpu

    params = training_run.params
    reporter = _status_reporter(topology.is_first)
    with reporter or contextlib.nullcontext():
        result = train_on_cpu(
            params,
            model_path=params.base_model,
            processed_data=processed_path,
            output_dir=Path(training_run.output_dir),
            threads=threads,
            log=_log,
            topology=topology,
            resume_from=resume_from.path if resume_from else None,
            on_progress=reporter.report if reporter else None,
        )
    _log(f"trained in {result.seconds:.1f}s ({result.tokens_per_second:.0f} tokens/s)")


def _status_reporter(is_first: bool) -> TrainerStatusReporter | None:
    """Node 0's pushes to the TrainJob's ``status.trainerStatus``, when the Trainer's controller
    injected its status server (see :mod:`trainer_status`); None otherwise."""
    if not is_first:
        return None
    from airflow_provider_sft.core.training.trainer_status import TrainerStatusReporter

    return TrainerStatusReporter.from_env(os.environ, log=_log)


def _train_on_cuda(training_run: TrainingRun, gpus: int, *, show_progress: bool = True) -> None:
    """instructlab-training under torchrun; its own output goes to the full log only, so the
    run's progress lines come from the metrics file it writes (on node 0, which writes it).

    With ``resume="auto"`` a termination signal makes the workers save a full state and stop
    (instructlab's on-demand checkpointing), and this process exits as preempted.
    """
    from airflow_provider_sft.core.training.instructlab_command import build_command
    from airflow_provider_sft.core.training.progress import MetricsFollower
    from airflow_provider_sft.core.training.resume import RESUME_AUTO

    command = build_command(
        training_run.params,
        model_path=training_run.params.base_model,
        processed_data_dir=training_run.processed_data_dir,
        output_dir=training_run.output_dir,
        env=os.environ,
        gpus_visible=gpus,
        flash_attn_available=_flash_attn_available(),
        on_demand_checkpointing=training_run.resume == RESUME_AUTO,
    )
    _log("instructlab-training: " + " ".join(command))
    metrics = Path(training_run.output_dir) / c.METRICS_FILE
    reporter = _status_reporter(show_progress)
    follower = MetricsFollower(
        metrics,
        num_epochs=training_run.params.num_epochs,
        effective_batch_size=training_run.params.effective_batch_size,
        log=_log,
        on_snapshot=reporter.report if reporter else None,
    )
    with reporter or contextlib.nullcontext():
        with follower if show_progress else contextlib.nullcontext():
            returncode = _run_instructlab(command, training_run)
        if returncode != 0:
            raise TrainingFailedError(f"instructlab-training exited with status {returncode}")
        if not metrics.exists():
            raise TrainingFailedError(f"instructlab-training finished without writing {metrics}")


def _run_instructlab(command: list[str], training_run: TrainingRun) -> int:
    """torchrun's exit status; with ``resume="auto"`` a signal saves a full state first (see
    :func:`preemption.run_checkpointing_on_sigterm`), and the trigger file is this run's own."""
    from airflow_provider_sft.core.training.resume import RESUME_AUTO

    if training_run.resume != RESUME_AUTO:
        return subprocess.run(command, check=False).returncode
    from airflow_provider_sft.core.training.preemption import run_checkpointing_on_sigterm

    try:
        return run_checkpointing_on_sigterm(
            command,
            output_dir=Path(training_run.output_dir),
            trigger_name=f"sft-checkpoint-{training_run.name}-{training_run.attempt or os.getpid()}",
        )
    except PreemptedError as exc:
        _log(f"preempted: instructlab-training saved the full state at step {exc.step}")
        raise


USAGE = "usage: entrypoint {train,resolve,prepare,export} CONFIG_JSON"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 1:  # a config alone: train (what earlier versions ran)
        args = ["train", *args]
    if len(args) != 2 or args[0] not in ("train", "resolve", "prepare", "export"):
        print(USAGE, file=sys.stderr)
        return 2
    step, config_path = args
    # The full output keeps the libraries' INFO lines (instructlab's data processing reports);
    # the task log shows only this program's own lines whatever the level here.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        try:
            config = jsonio.loads(Path(config_path).read_bytes())
        except (OSError, ValueError) as exc:
            raise TrainingFailedError(f"cannot read the config {config_path}: {exc}") from None
        if step == "train":
            run(TrainingRun.from_json_dict(config))
        else:
            from airflow_provider_sft.core.pod.steps import STEPS

            print(result_line(STEPS[step](config, log=_log)), flush=True)
    except PreemptedError as exc:  # the state is saved: a new attempt continues from it
        print(error_line(str(exc)), flush=True)
        return c.PREEMPTED_EXIT_CODE
    except SFTError as exc:
        print(error_line(str(exc)), flush=True)
        return 1
    except ImportError as exc:
        print(error_line(missing_module(exc)), flush=True)
        return 1
    except PermissionError as exc:
        print(
            error_line(
                f"permission denied: {exc.filename or exc}: the pod's user (uid {os.getuid()}, "
                f"gid {os.getgid()}) may not access it"
            ),
            flush=True,
        )
        return 1
    except Exception as exc:  # a bug or a library failure: its traceback, then the one line
        import traceback

        traceback.print_exc()
        print(error_line(f"{step} failed: {type(exc).__name__}: {exc}"), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The training program: runs in the training pod and as the local backend's process.

    python -m airflow_provider_sft.core.entrypoint [RUN_CONFIG_JSON]

Without an argument the run config is read from ``$SFT_RUN_CONFIG`` (JSON text): that
is how the TrainJob hands it to the pod, which may not see the Airflow worker's files.

1. tokenizes the chat data with instructlab-training's data processing and
   reports how many samples it dropped;
2. trains: on CUDA with instructlab-training's ``main_ds`` under torchrun, every
   parameter mapped (see :mod:`instructlab_command`); on a CPU with the loop in
   :mod:`cpu_trainer`, which writes the same files.

Exit status 0 means a model was trained; anything else is a failure whose reason
is the last ``ERROR:`` line of the output.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.errors import SFTError, TrainingFailedError
from airflow_provider_sft.core.run import Device, TrainingRun, cuda_device_count, plan_device

ERROR_PREFIX = "ERROR: "


def _log(message: str) -> None:
    print(f"[sft] {message}", flush=True)


def _flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def default_cache_env(run_dir: Path) -> dict[str, str]:
    """Cache directories writable under any UID (OpenShift): under the run unless already set."""
    cache = run_dir / ".cache"
    return {
        "HF_HOME": str(cache / "huggingface"),
        "TRITON_CACHE_DIR": str(cache / "triton"),
        "XDG_CACHE_HOME": str(cache),
    }


#: What an earlier attempt of the same run leaves in its directory, and a new attempt must not
#: inherit: instructlab-training resumes from any ``full_state/`` it finds, unconditionally.
EARLIER_ATTEMPT_STATE = (c.FULL_STATE_DIR, c.HF_FORMAT_DIR, c.METRICS_FILE)


def start_clean(output_dir: Path) -> list[str]:
    """Remove an earlier attempt's training state (node rank 0 only); returns what was removed.

    A retried TrainJob reuses its run directory on the PVC. The other nodes cannot load the
    state before this runs: their training starts only after torchrun's rendezvous with rank 0,
    which happens after this. Resuming on purpose is a separate feature, not an accident.
    """
    if os.environ.get("PET_NODE_RANK", "0") != "0":
        return []
    removed = []
    for name in EARLIER_ATTEMPT_STATE:
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def run(training_run: TrainingRun) -> None:
    started = time.monotonic()
    params = training_run.params
    output_dir = Path(training_run.output_dir)
    if removed := start_clean(output_dir):
        _log(f"starting clean: removed {', '.join(removed)} of an earlier attempt (no accidental resume)")
    for key, value in default_cache_env(output_dir).items():
        os.environ.setdefault(key, value)

    plan = plan_device(
        params, requested=training_run.device, cuda_devices=cuda_device_count(), cpu_count=os.cpu_count() or 1
    )
    _log(
        f"run {training_run.name}: device {plan.device.value}, {plan.processes} process(es), base model {params.base_model}"
    )
    for note in plan.notes:
        _log(note)

    from airflow_provider_sft.core.data_processing import process_chat_data

    report = process_chat_data(
        training_run.dataset_path,
        training_run.processed_data_dir,
        model_path=params.base_model,
        max_seq_len=params.max_seq_len,
        num_cpu_procs=max(1, min(plan.cpu_threads, 8)),
    )
    _log(
        f"data processing: {report.kept_samples}/{report.input_samples} samples kept, "
        f"{report.dropped_samples} dropped (shorter than 20 tokens or >= max_seq_len={params.max_seq_len}), "
        f"{report.total_tokens} tokens, {report.label_tokens} trained on"
    )

    if plan.device is Device.CUDA:
        _train_on_cuda(training_run, plan.processes)
    else:
        from airflow_provider_sft.core.cpu_trainer import train_on_cpu

        result = train_on_cpu(
            params,
            model_path=params.base_model,
            processed_data=report.processed_path,
            output_dir=output_dir,
            threads=plan.cpu_threads,
            log=_log,
        )
        _log(
            f"trained {result.steps} steps, {result.samples_seen} samples, {result.tokens_seen} tokens "
            f"in {result.seconds:.1f}s ({result.tokens_per_second:.0f} tokens/s)"
        )
    _log(f"done in {time.monotonic() - started:.1f}s")


def _train_on_cuda(training_run: TrainingRun, gpus: int) -> None:
    from airflow_provider_sft.core.instructlab_command import build_command

    command = build_command(
        training_run.params,
        model_path=training_run.params.base_model,
        processed_data_dir=training_run.processed_data_dir,
        output_dir=training_run.output_dir,
        env=os.environ,
        gpus_visible=gpus,
        flash_attn_available=_flash_attn_available(),
    )
    _log("instructlab-training: " + " ".join(command))
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise TrainingFailedError(f"instructlab-training exited with status {completed.returncode}")
    metrics = Path(training_run.output_dir) / c.METRICS_FILE
    if not metrics.exists():
        raise TrainingFailedError(f"instructlab-training finished without writing {metrics}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (not args and c.RUN_CONFIG_ENV not in os.environ):
        print(
            f"usage: python -m {__spec__.name if __spec__ else 'entrypoint'} [RUN_CONFIG_JSON]",
            file=sys.stderr,
        )
        print(
            f"       (without an argument the run config is read from ${c.RUN_CONFIG_ENV})", file=sys.stderr
        )
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args:
            training_run = TrainingRun.read_config(args[0])
        else:
            training_run = TrainingRun.from_json_dict(json.loads(os.environ[c.RUN_CONFIG_ENV]))
        run(training_run)
    except SFTError as exc:
        print(f"{ERROR_PREFIX}{exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The GPU check (issue #27): our path on CUDA, measured against bare instructlab-training.

    python scripts/gpu_check.py OUT_DIR [--budget 480] [--size gpu|tiny] [--work DIR]
    python scripts/gpu_check.py bare CONFIG_JSON        (the bare phase's own process)

``scripts/gpu-check.sh`` runs it on a lent GPU machine with the carried wheels; the CPU-side tests
run it here with ``--size tiny``. Within one budget (default 480 s), each phase with its share and
stopped past it (the report says so):

0. builds a Llama model from a config, no download, with the project's tiny tokenizer
   (:data:`SIZES`: ``gpu`` is 378 M parameters, saved in bfloat16 as published checkpoints are);
   the data is the bundled chat dataset, repeated (:data:`SIZES`) so that one epoch is enough
   steps to measure and the run saves one checkpoint, at its end, as a default run does;
1. **ours**: the pipeline's own steps with the local backend, as the example DAG runs them:
   ``resolve``, ``prepare`` (tokenized before the job), ``submit``/``wait`` (our entrypoint:
   instructlab-training's ``main_ds`` under torchrun on CUDA, the CPU loop without one), ``export``;
2. **bare**: ``instructlab.training.run_training`` with the same ``TrainingArgs`` on the same
   data, in a process of its own (it processes the data itself, as a bare user's run does);
3. the report (:mod:`gpu_check_report`): tokens/s per GPU of both and their ratio, MFU, peak
   GPU memory, time to the first step, both loss curves; before the phases, the ``main_ds``
   arguments of both runs are parsed with main_ds's own argparser and compared, so the two
   runs are known to train the same thing.

It writes ``gpu_check.json``, ``ours_metrics.jsonl``, ``bare_metrics.jsonl`` and the two runs'
logs (their last MiBs) into OUT_DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # on the GPU machine the provider is not installed: the clone is
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check_args import (  # noqa: E402
    argument_differences,
    flash_attn_available,
    ours_main_ds_args,
    run_training_command,
    script_args,
    torchrun_args,
    training_args,
)
from gpu_check_report import PhaseOutcome, build_report, summary_lines  # noqa: E402

from airflow_provider_sft.core import constants as c  # noqa: E402
from airflow_provider_sft.core import jsonio  # noqa: E402
from airflow_provider_sft.core.params import SFTParams  # noqa: E402

Log = Callable[[str], None]
REPORT_FILE = "gpu_check.json"
#: Seconds kept back from the phases for the report and the copies into OUT_DIR.
REPORT_RESERVE_SECONDS = 20.0
#: Seconds of ours' share kept back for its export step (a few hard links and the card).
EXPORT_RESERVE_SECONDS = 20.0
#: The tail of each run's full log that is copied into OUT_DIR (what comes back is limited).
LOG_TAIL_BYTES = 4 * 2**20


@dataclass(frozen=True)
class CheckSize:
    """The model's shape and the run's parameters of one size of the check."""

    model: dict[str, Any]
    params: dict[str, Any]
    repeat: int  # copies of the bundled dataset in the training data


SIZES: dict[str, CheckSize] = {
    # 378 M parameters (hidden 1024, 24 layers, GQA 16/8 heads, MLP 4096; the tokenizer's 512
    # tokens, tied): big enough that the GPU's time goes to the model, small enough to build,
    # load and save in seconds. The bundled dataset x 50 = 11,750 samples, about 650 k tokens:
    # 92 steps of the default 128 samples, one epoch, one checkpoint at its end.
    "gpu": CheckSize(
        model={
            "hidden_size": 1024,
            "num_layers": 24,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "intermediate_size": 4096,
            "max_positions": 2048,
            "dtype": "bfloat16",
        },
        params={
            "resource_gpu_per_worker": 1,
            "resource_cpu_per_worker": "8",
            "resource_memory_per_worker": "96Gi",
            "effective_batch_size": 128,
            "learning_rate": 1e-4,
            "lr_warmup_steps": 10,
            "num_epochs": 1,
            "checkpoint_at_epoch": True,
            "accelerate_full_state_at_epoch": False,  # 16 B per parameter, saved for nothing here
        },
        repeat=50,
    ),
    # The CPU-side smoke: the tiny model's default shape, a few CPU-loop steps.
    "tiny": CheckSize(
        model={},
        params={
            "resource_gpu_per_worker": 0,
            "resource_cpu_per_worker": "1",
            "effective_batch_size": 64,
            "learning_rate": 1e-3,
            "num_epochs": 1,
            "checkpoint_at_epoch": True,
            "accelerate_full_state_at_epoch": False,
        },
        repeat=1,
    ),
}


def check_params(size: CheckSize, model_dir: Path) -> SFTParams:
    """The run's parameters: the size's, the others the product's defaults (``resume="auto"`` too)."""
    return SFTParams.parse({"base_model": str(model_dir), **size.params})


# --- the budget ------------------------------------------------------------------------------


class Budget:
    """One deadline for the whole check; each phase gets a share of what is left."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.deadline = clock() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - self.clock())

    def share(self, fraction: float, *, reserve: float = REPORT_RESERVE_SECONDS) -> float:
        """``fraction`` of what is left once ``reserve`` is kept back (never negative)."""
        return max(0.0, (self.left() - reserve) * fraction)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


# --- the model and the data ------------------------------------------------------------------


def build_model(out: Path, size: CheckSize) -> Path:
    from airflow_provider_sft.core.training.tiny_model import build_tiny_model

    return build_tiny_model(out, **size.model)


def repeated_dataset(out: Path, repeat: int) -> Path:
    """The bundled chat dataset, ``repeat`` times over, as one JSONL file."""
    from airflow_provider_sft.core.sample_data import bundled_dataset_path

    data = bundled_dataset_path().read_bytes()
    if not data.endswith(b"\n"):
        data += b"\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data * repeat)
    return out


# --- GPU memory -------------------------------------------------------------------------------


class DeviceMemoryPeak:
    """The most memory the GPU had in use while it ran (every process, the caches included),
    sampled with NVML every ``interval`` seconds; None without a GPU or NVML."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peak: int | None = None
        self._stop = threading.Event()
        self._handle: Any = None
        with contextlib.suppress(Exception):  # no NVML, no driver, no GPU: no figure
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)

    def _sample(self) -> None:
        import pynvml

        used = int(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        self.peak = used if self.peak is None else max(self.peak, used)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self._sample()

    @contextlib.contextmanager
    def watching(self) -> Iterator[DeviceMemoryPeak]:
        if self._handle is None:
            yield self
            return
        thread = threading.Thread(target=self._loop, daemon=True, name="gpu-memory")
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


# --- phase 1: ours ----------------------------------------------------------------------------


def run_ours(work: Path, dataset: Path, params: SFTParams, budget_seconds: float, log: Log) -> PhaseOutcome:
    """The pipeline's steps on the local backend, within ``budget_seconds``."""
    from airflow_provider_sft.core.backends.base import JobStatus
    from airflow_provider_sft.core.backends.local import LocalProcessBackend
    from airflow_provider_sft.core.pod.steps import STEPS, prepare_config
    from airflow_provider_sft.core.run import TrainingRun

    started, clock = utc_now(), time.monotonic()
    name = "gpu-check-ours"
    workspace = work / "ours"
    run_dir = workspace / c.RUNS_DIR / name
    memory = DeviceMemoryPeak()

    def outcome(status: str, detail: str = "") -> PhaseOutcome:
        metrics = run_dir / c.METRICS_FILE
        return PhaseOutcome(
            "ours",
            status,
            time.monotonic() - clock,
            budget_seconds,
            started,
            metrics if metrics.is_file() else None,
            memory.peak,
            detail,
        )

    backend = LocalProcessBackend()
    with memory.watching():
        resolved = STEPS["resolve"](
            {
                "source": str(dataset),
                "workspace": str(workspace),
                "dataset_dir": str(Path(c.RUNS_DIR) / name / c.DATASET_DIR),
            },
            log=log,
        )
        run = TrainingRun(name, params, resolved["path"], str(run_dir))
        backend.preflight(run)
        prepared = backend.run_step(
            "prepare",
            name,
            prepare_config(run.dataset_path, run.processed_data_dir, params),
            on_log=log,
        )
        log(f"prepared: {prepared['report'].get('kept_samples')} samples kept")
        handle = backend.submit(run)
        wait_for = budget_seconds - (time.monotonic() - clock) - EXPORT_RESERVE_SECONDS
        result = backend.wait(handle, on_log=log, timeout_seconds=max(wait_for, 1.0))
        if result.status is JobStatus.TIMED_OUT:
            return outcome("timed_out", result.message)
        if result.status is not JobStatus.SUCCEEDED:
            return outcome("failed", result.message)
        exported = backend.run_step(
            "export",
            name,
            {
                "run_dir": str(run_dir),
                "model_dir": str(run_dir / c.FINAL_MODEL_DIR),
                "metrics_path": str(run_dir / c.METRICS_SUMMARY_FILE),
                "latest_path": str(workspace / c.LATEST_FILE),
                "job_created": handle.created,
            },
            on_log=log,
        )
    return outcome("completed", f"exported {exported['source_checkpoint']} -> {exported['model_path']}")


# --- phase 2: bare instructlab-training -------------------------------------------------------


def bare_main(config_path: str) -> int:
    """The bare phase's process: ``run_training`` with the arguments the parent wrote."""
    from instructlab.training import run_training
    from instructlab.training.config import TorchrunArgs, TrainingArgs

    config = jsonio.loads(Path(config_path).read_bytes())
    run_training(TorchrunArgs(**config["torch_args"]), TrainingArgs(**config["train_args"]))
    return 0


def bare_environment(params: SFTParams) -> dict[str, str]:
    """The variables our local backend sets that change how fast a run goes, for the bare run too."""
    from airflow_provider_sft.core.backends.local import LocalProcessBackend
    from airflow_provider_sft.core.run import TrainingRun

    ours = LocalProcessBackend().environment(TrainingRun("gpu-check-bare", params, "", "/nonexistent"))
    same = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM", "PYTHONUNBUFFERED")
    # run_training starts ``torchrun`` by name: the interpreter's own, as in an activated venv.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
    return {**os.environ, **{key: ours[key] for key in same}, "PATH": path, "COLUMNS": "200"}


def run_bare(
    work: Path, dataset: Path, params: SFTParams, gpus: int, budget_seconds: float, log: Log
) -> PhaseOutcome:
    """``run_training`` in its own process group, stopped past ``budget_seconds``."""
    started, clock = utc_now(), time.monotonic()
    output_dir = work / "bare"
    output_dir.mkdir(parents=True, exist_ok=True)
    train_args = training_args(
        params, dataset_path=str(dataset), output_dir=output_dir, cpu_procs=max(1, (os.cpu_count() or 1))
    )
    config_path = work / "bare_config.json"
    config_path.write_bytes(
        jsonio.dumps(
            {
                "train_args": train_args.model_dump(mode="json"),
                "torch_args": torchrun_args(gpus).model_dump(mode="json"),
            }
        )
    )
    memory = DeviceMemoryPeak()
    log_path = output_dir / "bare.log"
    with memory.watching(), log_path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "bare", str(config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=bare_environment(params),
            cwd=output_dir,
            start_new_session=True,
        )
        try:
            code: int | None = process.wait(timeout=max(budget_seconds, 1.0))
        except subprocess.TimeoutExpired:
            code = None
            stop_group(process)
    metrics = output_dir / c.METRICS_FILE
    seconds = time.monotonic() - clock
    checkpoints = sorted(p.name for p in (output_dir / c.HF_FORMAT_DIR).glob("*") if p.is_dir())
    if code is None:
        status, detail = "timed_out", f"stopped after {budget_seconds:.0f}s"
    elif code != 0 or not checkpoints:  # run_training returns without raising on some failures
        status = "failed"
        detail = f"exit status {code}, checkpoints {checkpoints}: " + tail_text(log_path, 1500)
    else:
        status, detail = "completed", f"checkpoints {checkpoints}"
    log(f"bare: {status} ({detail[:300]})")
    return PhaseOutcome(
        "bare",
        status,
        seconds,
        budget_seconds,
        started,
        metrics if metrics.is_file() else None,
        memory.peak,
        detail,
    )


def stop_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the process group, SIGKILL after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def tail_text(path: Path, size: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def copy_tail(source: Path, target: Path, size: int = LOG_TAIL_BYTES) -> None:
    if source.is_file():
        target.write_text(tail_text(source, size))


# --- the environment --------------------------------------------------------------------------


def environment_facts(wheel_dir: Path | None) -> dict[str, Any]:
    """Python, torch and the GPU here, and the carried wheels' requirements the installed set leaves
    unmet (the check ``gpu_image`` makes on the device notes, made again on what is really there)."""
    import importlib.metadata
    import platform

    import torch

    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "flash_attn": flash_attn_available(),
    }
    versions = {}
    for name in (
        "transformers",
        "accelerate",
        "instructlab-training",
        "datasets",
        "trl",
        "pydantic",
        "numpy",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    facts["versions"] = versions
    if wheel_dir is not None:
        from gpu_image import installed_unmet, read_wheel

        facts["unmet_requirements"] = installed_unmet(
            [read_wheel(p) for p in sorted(wheel_dir.glob("*.whl"))]
        )
    return facts


# --- the check --------------------------------------------------------------------------------


def run_check(
    out: Path, *, budget_seconds: float, size_name: str, work: Path, wheel_dir: Path | None, log: Log
) -> dict[str, Any]:
    budget = Budget(budget_seconds)
    size = SIZES[size_name]
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    from airflow_provider_sft.core.results.efficiency import cuda_device_name, read_model_config
    from airflow_provider_sft.core.run import cuda_device_count

    gpus = cuda_device_count() if size.params.get("resource_gpu_per_worker") else 0
    gpu_name = cuda_device_name() if gpus else None
    environment = environment_facts(wheel_dir)
    log(f"environment: {jsonio.dumps(environment).decode()}")

    clock = time.monotonic()
    model_dir = build_model(work / "model", size)
    build_seconds = time.monotonic() - clock
    model_config = read_model_config(model_dir)
    from airflow_provider_sft.core.results.efficiency import parameter_count

    parameters = parameter_count(model_config) if model_config else None
    log(f"model: {parameters:,} parameters, built in {build_seconds:.1f}s at {model_dir}")
    dataset = repeated_dataset(work / "dataset" / "chat.jsonl", size.repeat)
    params = check_params(size, model_dir)

    ours_args = ours_main_ds_args(
        params, processed_dir=str(work / "x" / c.PROCESSED_DIR), output_dir=str(work / "x")
    )
    capture_dir = work / "capture"
    bare_command = run_training_command(
        training_args(params, dataset_path=str(dataset), output_dir=capture_dir, cpu_procs=1),
        torchrun_args(gpus),
    )
    differences = argument_differences(ours_args, script_args(bare_command))
    log(f"main_ds arguments that differ between the runs: {differences or 'none'}")

    ours_budget = budget.share(0.5)
    log(f"phase ours: {ours_budget:.0f}s")
    try:
        ours = run_ours(work, dataset, params, ours_budget, log)
    except Exception as exc:  # a step that failed: the report says which, the bare phase still runs
        ours = PhaseOutcome(
            "ours", "failed", None, ours_budget, None, None, None, f"{type(exc).__name__}: {exc}"
        )
    run_dir = work / "ours" / c.RUNS_DIR / "gpu-check-ours"
    if ours.metrics_path is None and (run_dir / c.METRICS_FILE).is_file():
        ours = dataclasses.replace(ours, metrics_path=run_dir / c.METRICS_FILE)
    log(f"ours: {ours.status} {ours.detail[:300]}")

    bare_budget = budget.share(1.0)
    log(f"phase bare: {bare_budget:.0f}s")
    bare = run_bare(work, dataset, params, gpus, bare_budget, log)

    report = build_report(
        ours,
        bare,
        model_config=model_config,
        gpu_name=gpu_name,
        gpus=gpus,
        extra={
            "size": size_name,
            "budget_seconds": budget_seconds,
            "model_parameters": parameters,
            "model_build_seconds": build_seconds,
            "dataset_repeat": size.repeat,
            "params": params.to_json_dict(),
            "main_ds_argument_differences": differences,
            "main_ds_args_ours": ours_args,
            "run_training_command": bare_command,
            "environment": environment,
        },
    )
    (out / REPORT_FILE).write_bytes(jsonio.dumps(report, indent=True))
    for name, outcome in (("ours", ours), ("bare", bare)):
        if outcome.metrics_path is not None:
            (out / f"{name}_metrics.jsonl").write_bytes(outcome.metrics_path.read_bytes())
    copy_tail(run_dir / c.TRAIN_LOG_FILE, out / "ours_train.log")
    copy_tail(work / "bare" / "bare.log", out / "bare_train.log")
    for line in summary_lines(report):
        log(line)
    return report


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "bare":
        return bare_main(args[1])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="where the report, metrics files and logs go")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check")
    parser.add_argument("--size", choices=sorted(SIZES), default="gpu")
    parser.add_argument("--work", type=Path, help="scratch directory (default: OUT/../gpu-check-work)")
    parser.add_argument("--wheels", type=Path, help="the carried wheels, to check their requirements here")
    options = parser.parse_args(args)
    work = options.work or options.out.parent / "gpu-check-work"

    def log(line: str) -> None:
        print(f"[gpu-check {time.strftime('%H:%M:%S')}] {line}", flush=True)

    try:
        report = run_check(
            options.out,
            budget_seconds=options.budget,
            size_name=options.size,
            work=work,
            wheel_dir=options.wheels,
            log=log,
        )
    except Exception as exc:  # the report says what stopped the check, beside the log's traceback
        options.out.mkdir(parents=True, exist_ok=True)
        (options.out / REPORT_FILE).write_bytes(jsonio.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        raise
    return 0 if report["phases"]["ours"]["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())

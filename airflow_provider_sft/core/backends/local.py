"""The embedded backend: the training entrypoint as a local process.

The process runs in its own session (process group), so cancellation reaches
everything it started (data-processing workers, torchrun children): SIGTERM to
the group, then SIGKILL after a grace period. Every output line is kept in
``<run>/train.log``; the caller gets the provider's own lines (see :mod:`pod.protocol`), and
a line naming that file when the wait starts and ends. ``resource_memory_per_worker`` is
enforced like a kubelet would: the run is stopped when the resident memory of
its process group goes above it.

The workspace steps (``resolve``, ``export``) run in this process: wherever this machine sees
the workspace (this backend, or a cluster's PVC that the worker mounts too), this backend runs them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

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
from airflow_provider_sft.core.clock import SYSTEM_CLOCK, Clock
from airflow_provider_sft.core.errors import DatasetError, InvalidParameterError, TrainingFailedError
from airflow_provider_sft.core.files import owned_path, remove_owned
from airflow_provider_sft.core.params import hub_token_warning
from airflow_provider_sft.core.pod.entrypoint import default_cache_env
from airflow_provider_sft.core.pod.protocol import classify_log_line, provider_line
from airflow_provider_sft.core.pod.provenance import PROGRAM_SHA256_ENV
from airflow_provider_sft.core.pod.steps import STEPS
from airflow_provider_sft.core.results.live_progress import (
    SOURCE_OUTPUT,
    LiveProgress,
    ProgressSink,
    from_progress_line,
    say_when_due,
)
from airflow_provider_sft.core.run import DevicePlan, TrainingRun, cuda_device_count, plan_device
from airflow_provider_sft.core.training.resume import EARLIER_ATTEMPT_STATE

_EOF = object()
log = logging.getLogger(__name__)


@dataclass
class _Process:
    popen: subprocess.Popen
    lines: queue.Queue
    log_path: Path
    memory_limit_bytes: int
    cancelled: bool = False


def _process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal_all(processes: list[psutil.Process], sig: signal.Signals) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            process.send_signal(sig)


def _group_rss_bytes(pid: int) -> int:
    total = 0
    for process in _process_tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += process.memory_info().rss
    return total


#: Steps that fork worker processes (``datasets``' ``num_proc`` pools): forked from the Airflow
#: task's process, which runs threads of its own (logging, the supervisor's channel), a child can
#: inherit a lock another thread held and hang for ever, as the prepare step did here. They run
#: in a fresh interpreter, the pod program's own command, as they do in a pod.
CHILD_PROCESS_STEPS = frozenset({"prepare"})


def run_step_in_child(
    step: str, config: dict[str, Any], *, on_log: LogSink, env: dict[str, str]
) -> dict[str, Any]:
    """Run ``python -m ...pod.entrypoint <step> <config>`` and read its result line; its provider
    lines go to ``on_log``. The child never outlives the call (a task timeout or kill included)."""
    import tempfile

    from airflow_provider_sft.core import jsonio
    from airflow_provider_sft.core.pod.protocol import parse_result

    with tempfile.TemporaryDirectory(prefix=f"sft-{step}-") as scratch:
        config_path = Path(scratch) / "config.json"
        config_path.write_bytes(jsonio.dumps(config))
        command = [sys.executable, "-m", "airflow_provider_sft.core.pod.entrypoint", step, str(config_path)]
        popen = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        lines: list[str] = []
        error = ""
        try:
            assert popen.stdout is not None
            for raw in popen.stdout:
                line = raw.rstrip("\n")
                lines = [*lines[-19:], line]
                if (shown := classify_log_line(line)) is not None:  # the result line is not shown
                    on_log(shown.text)
                    error = shown.error or error
            code = popen.wait()
        finally:
            if popen.poll() is None:
                popen.kill()
                popen.wait()
    result = parse_result(lines)
    if code == 0 and result is not None:
        return result
    reason = error or "\n".join(lines[-5:]) or "no output"
    raise TrainingFailedError(f"The {step} step failed (exit status {code}): {reason}")


def _has_hub_token(env: dict[str, str]) -> bool:
    """A token the training process will find: in its environment, or saved by ``hf auth login``."""
    if env.get(c.HF_TOKEN_ENV):
        return True
    home = Path(
        env.get("HF_HOME") or Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    )
    return (Path(env["HF_TOKEN_PATH"]) if env.get("HF_TOKEN_PATH") else home / "token").is_file()


class LocalConfig(BaseModel):
    """The local backend's settings: a run on this machine (see ``build_backend``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    python: str = Field(default_factory=lambda: sys.executable)  # the interpreter that runs the entrypoint
    grace_period_seconds: PositiveFloat = 10.0  # between SIGTERM and SIGKILL on cancel
    poll_interval_seconds: PositiveFloat = 0.5  # how often the deadline and memory limit are checked


class LocalProcessBackend(TrainingBackend):
    """Runs the entrypoint with this interpreter, one run per process group."""

    name = BackendName.LOCAL

    def __init__(
        self,
        config: LocalConfig | None = None,
        *,
        credentials: Credentials | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ):
        config = config or LocalConfig()
        self.python = config.python
        self.grace_period_seconds = config.grace_period_seconds
        self.poll_interval_seconds = config.poll_interval_seconds
        self.clock = clock
        # e.g. HF_TOKEN: only ever in the process environment (a pull secret has no use here)
        self.secret_env = (credentials or Credentials()).secret_env()
        self._processes: dict[str, _Process] = {}

    def preflight(self, run: TrainingRun) -> None:
        """The parameters this machine cannot honour. The data is checked by ``submit``: a caller
        may preflight before it has resolved the data (the KFP shim does, to write nothing on bad input)."""
        self._checked_plan(run)

    @staticmethod
    def _check_data(run: TrainingRun) -> None:
        if not Path(run.dataset_path).is_file():
            raise DatasetError(f"Training data {run.dataset_path} does not exist or is not a file")
        if Path(run.dataset_path).stat().st_size == 0:
            raise DatasetError(f"Training data {run.dataset_path} is empty (0 bytes)")

    def _checked_plan(self, run: TrainingRun) -> DevicePlan:
        """Everything preflight rejects, and the device plan the run will use (computed once per submit)."""
        plan = plan_device(
            run.params, requested=run.device, cuda_devices=cuda_device_count(), cpu_count=os.cpu_count() or 1
        )
        if run.params.resource_num_workers != 1:
            raise InvalidParameterError(
                {
                    "resource_num_workers": f"the local backend runs one worker, got {run.params.resource_num_workers}"
                }
            )
        return plan

    def environment(self, run: TrainingRun, plan: DevicePlan | None = None) -> dict[str, str]:
        plan = plan or plan_device(
            run.params, requested=run.device, cuda_devices=cuda_device_count(), cpu_count=os.cpu_count() or 1
        )
        threads = str(plan.cpu_threads)
        env = {
            **default_cache_env(Path(run.output_dir)),
            **os.environ,  # the user's HF_HOME, token and caches stay theirs
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "TOKENIZERS_PARALLELISM": "false",
        }
        env.update(self.secret_env)
        env.update(run.params.envs)  # the user's training_envs win
        # What trains it, for the model card (the digest of the pod program these sources make);
        # set last, so a training_envs entry cannot claim another program.
        from airflow_provider_sft.core.backends.kubernetes.program import program_digest

        env[PROGRAM_SHA256_ENV] = program_digest()
        return env

    def submit(self, run: TrainingRun, *, timeout_seconds: float | None = None) -> JobHandle:
        plan = self._checked_plan(run)
        self._check_data(run)
        output_dir = Path(run.output_dir)
        if output_dir.name != run.name:
            raise InvalidParameterError(
                {"run_name": f"the run directory {output_dir} is not named after the run {run.name!r}"}
            )
        # An earlier attempt of this same run failed or was killed: its outputs go. The DAG run's
        # dataset and its prepared data (written here by the tasks before) stay: the training
        # process reuses the prepared data only when its fingerprint matches. Its saved training
        # state stays too: the training process resumes from it or removes it (resume.py), and says which.
        owned_path(output_dir, output_dir.parent, field="run_name")
        kept = (c.DATASET_DIR, c.PROCESSED_DIR, *EARLIER_ATTEMPT_STATE)
        for earlier in output_dir.iterdir() if output_dir.is_dir() else ():
            if earlier.name not in kept:
                remove_owned(earlier, output_dir, field="run_name")
        created = self.clock.now().isoformat()  # the run's start: its time to the first step counts from here
        run = dataclasses.replace(run, attempt=uuid.uuid4().hex[:12])  # names who saved a state
        config_path = run.write_config()
        log_path = output_dir / c.TRAIN_LOG_FILE
        env = self.environment(run, plan)
        if not _has_hub_token(env) and (warning := hub_token_warning(run.params.base_model)):
            log.warning(warning)
        popen = subprocess.Popen(
            [self.python, "-m", "airflow_provider_sft.core.pod.entrypoint", "train", str(config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=output_dir,
            env=env,
            start_new_session=True,
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(
            target=self._pump, args=(popen, lines), daemon=True, name=f"sft-log-{run.name}"
        ).start()
        self._processes[run.name] = _Process(popen, lines, log_path, run.params.memory_bytes)
        return JobHandle(self.name, run.name, str(output_dir), pid=popen.pid, created=created)

    @staticmethod
    def _pump(popen: subprocess.Popen, lines: queue.Queue) -> None:
        assert popen.stdout is not None
        for raw in popen.stdout:
            lines.put(raw.decode("utf-8", errors="replace").rstrip("\n"))
        lines.put(_EOF)

    def wait(
        self,
        handle: JobHandle,
        *,
        on_log: LogSink,
        timeout_seconds: float | None = None,
        on_progress: ProgressSink | None = None,
    ) -> JobResult:
        """Follow the process to its end. ``on_log`` gets the lines :func:`classify_log_line` shows; the
        failure message has the ``ERROR:`` line, or the last lines of the whole output. ``on_progress``
        gets the progress its step lines report, when a line of it is due."""
        process = self._processes[handle.name]
        full_output = provider_line(f"full output: {process.log_path}")
        on_log(full_output)
        tracker = LiveProgress()
        progress = None
        if on_progress is not None:
            progress = lambda line: self._progress(tracker, line, on_progress)  # noqa: E731
        try:
            return self._follow(handle, process, on_log, timeout_seconds, progress)
        finally:
            if on_progress is not None:
                say_when_due(tracker, on_progress, self.clock.monotonic(), final=True)
            on_log(full_output)

    def _progress(self, tracker: LiveProgress, line: str, on_progress: ProgressSink) -> None:
        if (progress := from_progress_line(line, SOURCE_OUTPUT)) is not None:
            tracker.observe(progress)
            say_when_due(tracker, on_progress, self.clock.monotonic())

    def _follow(
        self,
        handle: JobHandle,
        process: _Process,
        on_log: LogSink,
        timeout_seconds: float | None,
        on_progress_line: LogSink | None = None,
    ) -> JobResult:
        deadline = None if timeout_seconds is None else self.clock.monotonic() + timeout_seconds
        next_check = self.clock.monotonic() + self.poll_interval_seconds
        last_error = ""
        tail: list[str] = []
        # Line-buffered: a person following train.log sees each line as it comes.
        with process.log_path.open("a", encoding="utf-8", buffering=1) as log_file:
            while True:
                # The limits are checked every poll interval whatever the output does: a run
                # that prints steadily never leaves the queue empty, and must still be stopped.
                if self.clock.monotonic() >= next_check:
                    if (stopped := self._over_limits(handle, process, deadline, timeout_seconds)) is not None:
                        return stopped
                    next_check = self.clock.monotonic() + self.poll_interval_seconds
                try:
                    line = process.lines.get(timeout=self.poll_interval_seconds)
                except queue.Empty:
                    continue
                if line is _EOF:
                    break
                log_file.write(line + "\n")
                tail = [*tail[-19:], line]
                if (shown := classify_log_line(line)) is not None:
                    on_log(shown.text)
                    if shown.error is not None:
                        last_error = shown.error
                    if on_progress_line is not None:
                        on_progress_line(shown.text)
        exit_code = process.popen.wait()
        if process.cancelled:
            return JobResult(JobStatus.CANCELLED, "training was cancelled", exit_code)
        if exit_code == 0:
            return JobResult(JobStatus.SUCCEEDED, "training completed", exit_code)
        reason = last_error or "\n".join(tail[-5:]) or "no output"
        return JobResult(
            JobStatus.FAILED, f"training process exited with status {exit_code}: {reason}", exit_code
        )

    def _over_limits(
        self, handle: JobHandle, process: _Process, deadline: float | None, timeout_seconds: float | None
    ) -> JobResult | None:
        """Stop the run, and say why, once it is past its deadline or over its memory limit."""
        if process.cancelled or process.popen.poll() is not None:
            return None  # already ending: its end of output decides the result
        if deadline is not None and self.clock.monotonic() >= deadline:
            self.cancel(handle)
            return JobResult(JobStatus.TIMED_OUT, f"training did not finish within {timeout_seconds:g}s")
        rss = _group_rss_bytes(process.popen.pid)
        if rss > process.memory_limit_bytes:
            self.cancel(handle)
            return JobResult(
                JobStatus.FAILED,
                f"training used {rss / 2**20:.0f} MiB, over resource_memory_per_worker "
                f"({process.memory_limit_bytes / 2**20:.0f} MiB); the run was stopped",
            )
        return None

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
        """Run a workspace step here, the secrets in its environment only; its result.

        ``job_name`` names no job here, ``resources`` size none, and ``timeout_seconds`` is the
        caller's to enforce (the task's ``execution_timeout`` interrupts this process itself).
        A step that forks worker processes runs in a child process of its own (see
        :data:`CHILD_PROCESS_STEPS`); the others in this one.
        """
        if step in CHILD_PROCESS_STEPS:
            return run_step_in_child(step, config, on_log=on_log, env={**os.environ, **self.secret_env})
        return STEPS[step](config, log=on_log, env={**os.environ, **self.secret_env})

    def cancel(self, handle: JobHandle) -> None:
        process = self._processes.get(handle.name)
        if process is None or process.popen.poll() is not None:
            return
        process.cancelled = True
        # The whole tree, collected before signalling: children that left the process
        # group (setsid) are still ours to stop.
        members = _process_tree(process.popen.pid)
        self._signal_group(process.popen, signal.SIGTERM)
        _signal_all(members, signal.SIGTERM)
        _, survivors = psutil.wait_procs(members, timeout=self.grace_period_seconds)
        self._signal_group(process.popen, signal.SIGKILL)
        _signal_all(survivors, signal.SIGKILL)
        psutil.wait_procs(survivors, timeout=self.grace_period_seconds)
        process.popen.wait()

    @staticmethod
    def _signal_group(popen: subprocess.Popen, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, sig)

"""SIGTERM as a request to stop at the next step boundary, agreed on by every node.

Kubernetes preempts a pod (Kueue suspending its job, a node drained or reclaimed) with SIGTERM,
then SIGKILL after the grace period. The default SIGTERM action ends the process mid-step and
loses everything since the last epoch; here it only sets a flag. The training loop asks at each
step boundary, after the optimizer step, and with several nodes all of them agree through an
``all_reduce`` of the flag with MAX (instructlab's on-demand checkpointing does the same), so
the nodes that got no signal, or got it a moment later, stop at the same step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any


class StopOnSigterm:
    """Within ``with``, SIGTERM sets :attr:`requested` instead of ending the process.

    Installed only in the main thread (Python delivers signals there; another thread cannot
    install a handler), and the earlier handler is restored on exit, so whoever called the
    loop gets its own SIGTERM behaviour back.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        self.requested = True

    def __enter__(self) -> StopOnSigterm:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def agreed(self, world: int) -> bool:
        """Whether any node was asked to stop (a collective on several nodes: every node must call it)."""
        if world <= 1:
            return self.requested
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def run_checkpointing_on_sigterm(command: Sequence[str], *, output_dir: Path, trigger_name: str) -> int:
    """Run instructlab-training's torchrun command; a termination signal asks it for a full state.

    instructlab's own ``ParentSignalHandler`` (SIGTERM, SIGINT, SIGUSR1/2, SIGXCPU, SIGHUP) writes
    its trigger file, named per run through ``CHECKPOINT_TRIGGER_FILENAME`` so two runs sharing a
    node's ``/dev/shm`` never trigger each other; the workers (started with
    ``--on_demand_checkpointing``) see it at their next check, agree through an all-reduce, save
    ``full_state/epoch_<E>/`` and return. The signal is not passed on: torchrun would stop its
    workers mid-step. torchrun runs in its own session for the same reason (a signal to this
    process group reaches this process only). Returns torchrun's exit status; raises
    :class:`PreemptedError` when a signal came and a full state was saved after it, and
    :class:`TrainingFailedError` when a signal came and none was.
    """
    import os
    import subprocess
    import time

    from instructlab.training.on_demand_checkpoint import ParentSignalHandler, remove_trigger_file

    from airflow_provider_sft.core import constants as c
    from airflow_provider_sft.core.errors import PreemptedError, TrainingFailedError
    from airflow_provider_sft.core.training.resume import newest_complete_state

    os.environ["CHECKPOINT_TRIGGER_FILENAME"] = trigger_name  # read by the handler and by the workers
    started = time.time()
    handler = ParentSignalHandler()
    handler.install()  # clears a stale trigger file of this name first
    try:
        process = subprocess.Popen(list(command), start_new_session=True)
        returncode = process.wait()  # a signal runs the handler, then the wait goes on
    finally:
        handler.uninstall()
        remove_trigger_file()
    if handler.signal_received is None:
        return returncode
    state = newest_complete_state(output_dir / c.FULL_STATE_DIR, since=started)
    if state is None or state.global_step is None:
        raise TrainingFailedError(
            f"{handler.signal_received.name} received, but instructlab-training saved no full state before "
            f"it exited (status {returncode}): a new attempt starts from the last epoch's state, if any"
        )
    raise PreemptedError(step=state.global_step, epoch=state.epoch, samples_seen=state.samples_seen)

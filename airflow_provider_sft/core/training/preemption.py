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

"""Run a command that starts many processes, and end every one of them when asked to stop.

``airflow standalone`` starts a scheduler, a DAG processor, an API server and a triggerer; the
scheduler's LocalExecutor starts its workers, and a training task its own process group. On
Ctrl-C standalone stops only its direct children, and the executor's workers ignore SIGTERM:
run in the foreground with ``subprocess.call``, they outlived the demo (36 processes, about
5 GB). :func:`supervise` therefore starts the command in a session of its own, becomes the
*subreaper* of everything below it (Linux: orphans are reparented to it, not to init, so none
escapes the walk), and on SIGINT/SIGTERM/SIGHUP stops the whole tree: SIGINT to the command
(standalone's own orderly shutdown), then SIGTERM, then SIGKILL to whatever is left, each after
a grace period, and waits for them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

import psutil

#: Seconds each stage (SIGINT to the command, SIGTERM to all, SIGKILL to all) waits.
STOP_GRACE_S = 8.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_CHILD_SUBREAPER = 36


class _StopRequested(Exception):
    pass


def become_subreaper() -> bool:
    """Orphaned descendants are reparented to this process (Linux); False where not possible."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def descendants(session: int) -> list[psutil.Process]:
    """Every live process below this one, and every process left in ``session``."""
    found = {p.pid: p for p in psutil.Process().children(recursive=True)}
    for process in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if process.pid not in found and os.getsid(process.pid) == session:
                found[process.pid] = process
    return [p for p in found.values() if _alive(p)]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal_all(processes: Sequence[psutil.Process], signum: int) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signum)


def stop_tree(leader: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """End ``leader`` and everything it started: SIGINT, then SIGTERM, then SIGKILL, each waited for."""
    if leader.poll() is None:
        leader.send_signal(signal.SIGINT)
    psutil.wait_procs(descendants(leader.pid), timeout=grace)
    _signal_all(descendants(leader.pid), signal.SIGTERM)
    psutil.wait_procs(descendants(leader.pid), timeout=grace)
    for _ in range(10):  # a process may still fork while it dies: until none is left
        left = descendants(leader.pid)
        if not left:
            break
        _signal_all(left, signal.SIGKILL)
        psutil.wait_procs(left, timeout=grace)
    with contextlib.suppress(subprocess.TimeoutExpired):
        leader.wait(grace)


def supervise(
    command: Sequence[str], env: dict[str, str] | None = None, *, grace: float = STOP_GRACE_S
) -> int:
    """Run ``command`` until it exits or this process is told to stop; no process of it outlives this.

    Returns the command's exit status, or 0 when stopped by a signal (Ctrl-C is how one ends it).
    """
    become_subreaper()

    def request_stop(_signum: int, _frame: object) -> None:
        raise _StopRequested

    previous = {signum: signal.signal(signum, request_stop) for signum in _STOP_SIGNALS}
    leader = None
    try:
        # Its own session: a terminal's Ctrl-C reaches this process only, which stops all in order.
        leader = subprocess.Popen(list(command), env=env, start_new_session=True)
        return leader.wait()
    except _StopRequested:
        return 0
    finally:
        for signum in _STOP_SIGNALS:  # a second Ctrl-C does not interrupt the shutdown
            signal.signal(signum, signal.SIG_IGN)
        if leader is not None:
            stop_tree(leader, grace)
        for signum, handler in previous.items():
            signal.signal(signum, handler)

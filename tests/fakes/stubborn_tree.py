"""A process tree that will not stop: what ``airflow standalone`` leaves behind, in small.

Usage: ``stubborn_tree.py PIDFILE``. Starts workers that ignore SIGINT and SIGTERM (like the
LocalExecutor's), one in a session of its own (like a training process group), and one orphan
(its parent exits at once). Writes every pid to PIDFILE, one a line, says ``started`` on its
stdout (so a test waits for that line, not in a polling loop), then waits, ignoring SIGINT and
SIGTERM itself too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

STUBBORN = (
    "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
)


def main(pid_file: str) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    workers = [subprocess.Popen([sys.executable, "-c", STUBBORN]) for _ in range(3)]
    escaped = subprocess.Popen([sys.executable, "-c", STUBBORN], start_new_session=True)
    middle = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', {STUBBORN!r}], stdout=subprocess.DEVNULL).pid)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    orphan = int(middle.communicate()[0])  # its parent has exited: the orphan is reparented
    pids = [os.getpid(), *(w.pid for w in workers), escaped.pid, orphan]
    with open(pid_file + ".tmp", "w") as out:
        out.write("\n".join(map(str, pids)))
    os.replace(pid_file + ".tmp", pid_file)
    print("started", flush=True)
    time.sleep(600)


if __name__ == "__main__":
    main(sys.argv[1])

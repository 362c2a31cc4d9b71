"""STAND-IN for a container runtime: run the containers of a pod's nodes as a kubelet would.

Started by :mod:`tests.k8s.standin` as root inside fresh network and mount namespaces
(``unshare -n -m``), with a JSON plan on stdin. It:

* brings up loopback only: no network, and the nodes of one job share it, as pods
  reach each other by their hostnames (``/etc/hosts`` maps them to 127.0.0.1);
* relays the plan's ``services`` (a cluster Service the pods call, such as the Trainer's status
  server): a listener on the Service's port of that loopback forwards each connection, bytes
  as they are (TLS ends at the server), to the server's Unix socket outside;
* builds the "image": a tmpfs at ``/opt`` holding the Python interpreter and a
  ``site-packages`` that has only the image's distributions (torch, instructlab-training
  and their dependencies, not this provider and not pip), read-only;
* mounts the pod's volumes at their mount paths (the PVC's directory, the ConfigMap's
  files read-only, emptyDirs as tmpfs), then makes the root filesystem read-only;
* runs each node's command as a non-root UID with GID 0 (OpenShift's restricted
  policy), ``HOME=/`` (unwritable), its env exactly as the controller merged it, and
  writes each node's output to its log file;
* stops the nodes as a kubelet stops a deleted pod's container when it gets SIGTERM itself (the
  stand-in kubelet's way to delete the pods), and the other nodes once one fails (JobSet's failure
  policy): SIGTERM to the container's own process (the command, which ``setpriv`` and the image's
  ``python`` exec into), then, after the pod's ``terminationGracePeriodSeconds``, SIGKILL to all
  its processes (its process group: a container's cgroup is killed whole).

It prints ``{"started": [pids]}`` once the nodes run, and ``{"exit_codes": [...], "killed": [...], "first_failed": rank}``
when every node has ended: a kubelet's exit codes (128 + the signal for one a signal ended), and
whether the grace period ran out.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

IMAGE = "/opt/image"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True)


def bind(source: str, target: str, *, read_only: bool) -> None:
    os.makedirs(target, exist_ok=True) if os.path.isdir(source) else None
    sh("mount", "--bind", source, target)
    if read_only:
        sh("mount", "-o", "remount,bind,ro", target)


def build_image(plan: dict) -> None:
    """The image's filesystem under /opt: interpreter, filtered site-packages, bin/python."""
    sh("mount", "-t", "tmpfs", "-o", "mode=755,size=64m", "tmpfs", "/opt")
    os.makedirs(f"{IMAGE}/bin")
    bind(plan["python_prefix"], f"{IMAGE}/python", read_only=True)
    bind(plan["site_packages"], f"{IMAGE}/.all-site-packages", read_only=True)
    os.makedirs(f"{IMAGE}/site-packages")
    for name in plan["image_entries"]:  # only the image's distributions
        os.symlink(f"{IMAGE}/.all-site-packages/{name}", f"{IMAGE}/site-packages/{name}")
    python = f"{IMAGE}/python/bin/{plan['python_name']}"
    # -S: the interpreter's own site-packages are not the image's (and .pth files are not read)
    for name in ("python", "python3"):
        with open(f"{IMAGE}/bin/{name}", "w") as handle:
            handle.write(f'#!/bin/sh\nexec {python} -S "$@"\n')
        os.chmod(f"{IMAGE}/bin/{name}", 0o755)
    for name in ("pip", "pip3"):  # what a pod that tries to install would meet: no index here
        with open(f"{IMAGE}/bin/{name}", "w") as handle:
            handle.write('#!/bin/sh\necho "STAND-IN IMAGE: pip ran in the pod" >&2\nexit 1\n')
        os.chmod(f"{IMAGE}/bin/{name}", 0o755)


def stop(processes: list[subprocess.Popen], graces: list[float]) -> list[bool]:
    """SIGTERM to each running container process, SIGKILL to its group after its grace period;
    whether each was killed so."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    started, killed = time.monotonic(), []
    for process, grace in zip(processes, graces, strict=True):
        try:
            process.wait(max(0.0, started + grace - time.monotonic()))
            killed.append(False)
        except subprocess.TimeoutExpired:
            killed.append(True)
        with contextlib.suppress(ProcessLookupError):  # what is left of the container goes with it
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return killed


def _pipe(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


def _forward(client: socket.socket, path: str) -> None:
    """One connection to the Service: to its server's socket, or closed when nobody listens there."""
    server = socket.socket(socket.AF_UNIX)
    try:
        server.connect(path)
    except OSError:  # the server is down: the pod's connection is reset, as a Service without endpoints does
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        server.close()
        return
    back = threading.Thread(target=_pipe, args=(server, client), daemon=True)
    back.start()
    _pipe(client, server)
    back.join()
    client.close()
    server.close()


def relay(port: int, path: str) -> None:
    """Listen on the Service's port of this loopback, for as long as the pods run."""
    listener = socket.create_server(("127.0.0.1", port))

    def accept() -> None:
        while True:
            client, _ = listener.accept()
            threading.Thread(target=_forward, args=(client, path), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def exit_code(returncode: int) -> int:
    """The container's exit code as the kubelet reports it: 128 + N for a process signal N ended."""
    return 128 - returncode if returncode < 0 else returncode


def main() -> int:
    deleted: list[int] = []  # the kubelet stand-in's SIGTERM: the pods were deleted
    signal.signal(signal.SIGTERM, lambda signum, _frame: deleted.append(signum))
    plan = json.load(sys.stdin)
    sh("ip", "link", "set", "lo", "up")
    # The logs are opened before /tmp is covered, through a mount of their own: files open for
    # writing through the root mount would keep it from becoming read-only.
    log_dir = os.path.dirname(plan["nodes"][0]["log"])
    sh("mount", "--bind", log_dir, log_dir)
    logs = [open(node["log"], "wb", buffering=0) for node in plan["nodes"]]  # noqa: SIM115
    build_image(plan)
    # Sources are staged under /opt first: they may live under a path a volume then covers
    # (/tmp). Then every volume is mounted in path order, parents first, as the kubelet does.
    for number, mount in enumerate(plan["mounts"]):
        if mount["kind"] != "emptyDir":
            stage = f"{IMAGE}/.stage/{number}"
            os.makedirs(stage)
            sh("mount", "--bind", mount["source"], stage)
            mount["source"] = stage
    for number, service in enumerate(plan.get("services", [])):  # the server's socket, staged too
        stage = f"{IMAGE}/.services/{number}"
        os.makedirs(stage)
        sh("mount", "--bind", os.path.dirname(service["socket"]), stage)
        relay(service["port"], f"{stage}/{os.path.basename(service['socket'])}")
    bind(plan["hosts_file"], "/etc/hosts", read_only=True)
    for mount in sorted(plan["mounts"], key=lambda m: m["path"].rstrip("/").count("/")):
        os.makedirs(mount["path"], exist_ok=True)
        if mount["kind"] == "emptyDir":
            sh("mount", "-t", "tmpfs", "-o", "mode=1777,size=2g", "tmpfs", mount["path"])
        else:
            bind(mount["source"], mount["path"], read_only=mount["read_only"])
    sh("mount", "-o", "remount,ro", "/opt")
    sh("mount", "-o", "remount,bind,ro", "/")
    user = ["setpriv", f"--reuid={plan['uid']}", f"--regid={plan['gid']}", "--clear-groups", "--"]
    processes = [
        subprocess.Popen(
            user + node["argv"],
            env=node["env"],
            cwd="/",
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the container's processes, as one group
        )
        for node, log in zip(plan["nodes"], logs, strict=False)
    ]
    print(json.dumps({"started": [process.pid for process in processes]}), flush=True)
    graces = [node["grace_seconds"] for node in plan["nodes"]]
    killed = [False] * len(processes)
    first_failed = None  # the node whose own failure ended the job, not one stopped because of it
    # Deleted pods are stopped; and as JobSet's default failure policy does: once a node fails,
    # the job fails and the other nodes' pods are deleted.
    while any(process.poll() is None for process in processes):
        failed = [rank for rank, process in enumerate(processes) if process.poll() not in (None, 0)]
        if deleted or failed:
            first_failed = failed[0] if failed else None
            killed = stop(processes, graces)
            break
        time.sleep(0.1)
    codes = [exit_code(process.wait()) for process in processes]
    if first_failed is None and any(codes):
        first_failed = next(rank for rank, code in enumerate(codes) if code)
    print(json.dumps({"exit_codes": codes, "killed": killed, "first_failed": first_failed}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

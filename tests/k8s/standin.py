"""STAND-IN for the Trainer controller, JobSet and the kubelet: the parts of a cluster that run pods.

There are no GPUs, kubelet or Trainer controller here. This module does their part of the
work for a TrainJob stored in the REAL API server, against the REAL runtime object:

* :func:`merge_node_pods` is what the controller does (``pkg/runtime/framework/plugins``):
  the runtime's ``node`` pod template, with the TrainJob's ``trainer`` (image, command,
  args, env, ``resourcesPerNode``) applied, then its ``runtimePatches`` (v2.2+) or
  ``podTemplateOverrides`` (v2.1), then the torch plugin's ``PET_*`` variables for each node;
* :class:`Kubelet` runs those pods like a kubelet: volumes resolved (a PVC is a directory
  registered with :meth:`Kubelet.add_pvc`, a ConfigMap or Secret comes from the fake core
  store), every node its own process in :mod:`tests.k8s.sandbox` (no network, non-root,
  read-only root, an image Python that cannot import this provider);
* :meth:`Kubelet.stop` deletes a job's pods as the Job controller does when JobSet (or the
  Training Operator) suspends a job: each container gets SIGTERM, then SIGKILL after its pod's
  ``terminationGracePeriodSeconds`` (Kubernetes' default 30 s when unset), and the pods leave
  the core store once their containers ended.

Status goes back through the real ``/status`` subresource (``FakeCluster.drive``).
"""

from __future__ import annotations

import base64
import copy
import functools
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

NODE = "node"
PYTORCH = "pytorch"  # the PyTorchJob container the Training Operator looks at
POD_UID, POD_GID = 1000770000, 0  # an OpenShift restricted-SCC UID, root group
MASTER_PORT = 29500
IMAGE_PATH = "/opt/image/bin:/usr/local/bin:/usr/bin:/bin"
IMAGE_DISTRIBUTION = "instructlab-training"  # the training image: this and what it requires
#: A pod's terminationGracePeriodSeconds when its spec has none (k8s.io/api core/v1 DefaultTerminationGracePeriodSeconds).
DEFAULT_GRACE_SECONDS = 30


def unavailable() -> str | None:
    """Why pods cannot run here (None when they can): the sandbox needs root and util-linux."""
    import shutil

    if os.geteuid() != 0:
        return "the kubelet stand-in needs root (unshare -n -m, setpriv, mount)"
    missing = [tool for tool in ("unshare", "setpriv", "mount", "ip") if shutil.which(tool) is None]
    return f"the kubelet stand-in needs {', '.join(missing)}" if missing else None


# --- the Trainer controller ---------------------------------------------------------------------


def _replicated_job(runtime: dict[str, Any]) -> dict[str, Any]:
    jobs = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    return next(job for job in jobs if job["name"] == NODE)


def _merge_named(ours: list[dict[str, Any]], patch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Strategic merge by ``name`` (containers, volumes, mounts, env)."""
    merged = {item["name"]: item for item in copy.deepcopy(ours)}
    for item in patch:
        if item["name"] in merged and isinstance(item, dict):
            base = merged[item["name"]]
            for key, value in item.items():
                if key in ("volumeMounts", "env") and key in base:
                    base[key] = _merge_named(base[key], value)
                else:
                    base[key] = copy.deepcopy(value)
        else:
            merged[item["name"]] = copy.deepcopy(item)
    return list(merged.values())


def _apply_pod_patch(template: dict[str, Any], metadata: dict[str, Any], spec: dict[str, Any]) -> None:
    for key in ("labels", "annotations"):
        template.setdefault("metadata", {}).setdefault(key, {}).update(metadata.get(key) or {})
    pod = template.setdefault("spec", {})
    for key, value in spec.items():
        if key in ("containers", "initContainers", "volumes"):
            pod[key] = _merge_named(pod.get(key, []), value)
        else:
            pod[key] = copy.deepcopy(value)


def merge_node_pods(trainjob: dict[str, Any], runtime: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods of the TrainJob's ``node`` job, one per node, as the controller would create them."""
    name = trainjob["metadata"]["name"]
    spec = trainjob["spec"]
    template = copy.deepcopy(_replicated_job(runtime)["template"]["spec"]["template"])
    trainer = spec.get("trainer", {})
    container = next(c for c in template["spec"]["containers"] if c["name"] == NODE)
    for key in ("image", "command", "args"):
        if key in trainer:
            container[key] = trainer[key]
    if "env" in trainer:
        container["env"] = _merge_named(container.get("env", []), trainer["env"])
    if "resourcesPerNode" in trainer:
        container["resources"] = trainer["resourcesPerNode"]
    for patch in spec.get("runtimePatches", []):  # v2.2+
        for job in (
            patch.get("trainingRuntimeSpec", {}).get("template", {}).get("spec", {}).get("replicatedJobs", [])
        ):
            if job["name"] == NODE:
                pod = job.get("template", {}).get("spec", {}).get("template", {})
                _apply_pod_patch(template, pod.get("metadata", {}), pod.get("spec", {}))
    for override in spec.get("podTemplateOverrides", []):  # v2.1
        if any(target["name"] == NODE for target in override["targetJobs"]):
            _apply_pod_patch(template, override.get("metadata", {}), override.get("spec", {}))
    policy = runtime["spec"].get("mlPolicy", {})
    nodes = int(trainer.get("numNodes", policy.get("numNodes", 1)))
    procs = trainer.get("numProcPerNode", policy.get("torch", {}).get("numProcPerNode", "auto"))
    pods = []
    for rank in range(nodes):
        pod = copy.deepcopy(template)
        pod.setdefault("metadata", {})["name"] = f"{name}-{NODE}-0-{rank}-{rank:05x}"
        node = next(c for c in pod["spec"]["containers"] if c["name"] == NODE)
        node["env"] = [
            *node.get("env", []),  # the torch plugin's TorchRunReservedEnvNames
            {"name": "PET_NNODES", "value": str(nodes)},
            {"name": "PET_NPROC_PER_NODE", "value": str(procs)},
            {"name": "PET_NODE_RANK", "value": str(rank)},
            {"name": "PET_MASTER_ADDR", "value": f"{name}-{NODE}-0-0.{name}"},
            {"name": "PET_MASTER_PORT", "value": str(MASTER_PORT)},
        ]
        pods.append(pod)
    return pods


def pytorchjob_pods(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods of a PyTorchJob with the env the Training Operator v1 sets (v1.9, envvar.go/master.go).

    Master first (rank 0), then the workers (rank index + 1): ``PYTHONUNBUFFERED``,
    ``MASTER_ADDR``/``PET_MASTER_ADDR`` (``<job>-master-0``), ``MASTER_PORT``/``PET_MASTER_PORT``
    (the master's ``pytorchjob-port``), ``WORLD_SIZE`` (replicas x nprocPerNode, 1 when not a
    number), ``RANK``/``PET_NODE_RANK``, ``PET_NPROC_PER_NODE`` when set, ``PET_NNODES``.
    """
    name, spec = job["metadata"]["name"], job["spec"]
    replicas = spec["pytorchReplicaSpecs"]
    total = sum(int(replica.get("replicas", 1)) for replica in replicas.values())
    nproc = spec.get("nprocPerNode")
    per_node = int(nproc) if isinstance(nproc, str) and nproc.isdigit() else 1
    master = next(c for c in replicas["Master"]["template"]["spec"]["containers"] if c["name"] == PYTORCH)
    port = next(p["containerPort"] for p in master.get("ports", []) if p["name"] == "pytorchjob-port")
    pods = []
    for kind in ("Master", "Worker"):
        replica = replicas.get(kind)
        for index in range(int(replica.get("replicas", 1)) if replica else 0):
            pod = copy.deepcopy(replica["template"])
            pod.setdefault("metadata", {})["name"] = f"{name}-{kind.lower()}-{index}"
            rank = index + (1 if kind == "Worker" else 0)
            for container in pod["spec"]["containers"]:
                env = [
                    {"name": "PYTHONUNBUFFERED", "value": "1"},
                    {"name": "MASTER_PORT", "value": str(port)},
                    {"name": "PET_MASTER_PORT", "value": str(port)},
                    {"name": "MASTER_ADDR", "value": f"{name}-master-0"},
                    {"name": "PET_MASTER_ADDR", "value": f"{name}-master-0"},
                    {"name": "WORLD_SIZE", "value": str(total * per_node)},
                    {"name": "RANK", "value": str(rank)},
                    {"name": "PET_NODE_RANK", "value": str(rank)},
                ]
                if nproc is not None:
                    env.append({"name": "PET_NPROC_PER_NODE", "value": str(nproc)})
                env.append({"name": "PET_NNODES", "value": str(total)})
                container["env"] = [*container.get("env", []), *env]
            pods.append(pod)
    return pods


def job_pods(
    job: dict[str, Any], runtime: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], str, list[str]]:
    """A job's pods as its controller creates them, the program's container and the pods' DNS names."""
    name = job["metadata"]["name"]
    if job.get("kind") == "PyTorchJob":
        pods = pytorchjob_pods(job)
        return pods, PYTORCH, [pod["metadata"]["name"] for pod in pods]  # a headless Service per pod
    assert runtime is not None, "a TrainJob's pods come from its runtime"
    pods = merge_node_pods(job, runtime)
    return pods, NODE, [f"{name}-{NODE}-0-{rank}.{name}" for rank in range(len(pods))]


# --- the image ------------------------------------------------------------------------------


@functools.cache
def image_entries() -> tuple[str, ...]:
    """Top-level site-packages entries of instructlab-training and everything it requires."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = [IMAGE_DISTRIBUTION]
    while todo:
        wanted = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if wanted in seen:
            continue
        try:
            dist = importlib.metadata.distribution(wanted)
        except importlib.metadata.PackageNotFoundError:
            continue
        seen[wanted] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    entries = set()
    for dist in seen.values():
        for file in dist.files or []:
            top = file.parts[0]
            if top not in ("..", "__pycache__") and not top.endswith(".pth"):
                entries.add(top.removesuffix(".py") + (".py" if top.endswith(".py") else ""))
    site = Path(sysconfig.get_paths()["purelib"])
    return tuple(sorted(e for e in entries if (site / e).exists()))


# --- the kubelet --------------------------------------------------------------------------------


def _sandbox_reports(process: subprocess.Popen, sandbox: Sandbox) -> list[dict[str, Any]]:
    reports = []
    for line in process.stdout:
        reports.append(json.loads(line))
        sandbox.started.set()
    process.wait()
    return reports


class PodFailed(Exception):
    """A pod that cannot start (a missing Secret or ConfigMap, an unknown PVC)."""


@dataclass
class Sandbox:
    """The running pods of one job: their sandbox process, and whether their containers started."""

    process: subprocess.Popen
    started: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)


class Kubelet:
    def __init__(self, cluster: Any):
        self.cluster = cluster  # FakeCluster: the core objects (Secrets, ConfigMaps) and pod records
        self.pvcs: dict[str, Path] = {}
        self.extra_env: dict[str, str] = {}
        self.sandboxes: dict[tuple[str, str], Sandbox] = {}  # (namespace, job) -> its running pods
        self.stopped: set[tuple[str, str]] = set()  # jobs whose pods stop() ended (run() returns then)
        self.killed: dict[tuple[str, str], list[bool]] = {}  # per job: which nodes outlived their grace
        self.first_failed: dict[tuple[str, str], int | None] = {}  # per job: the node that failed it

    def stop(self, namespace: str, name: str) -> None:
        """Delete the running pods of job ``name`` (a suspension, a drain): SIGTERM, the grace
        period, SIGKILL (see :mod:`tests.k8s.sandbox`); returns once they are gone."""
        sandbox = self.sandboxes.get((namespace, name))
        if sandbox is None:
            return
        sandbox.started.wait()
        self.stopped.add((namespace, name))
        if sandbox.process.poll() is None:
            sandbox.process.send_signal(signal.SIGTERM)
        sandbox.ended.wait()

    def add_pvc(self, claim: str, directory: Path) -> Path:
        """A PersistentVolumeClaim, backed by ``directory`` (group 0 writable, as OpenShift's fsGroup)."""
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o2775)
        os.chown(directory, 0, POD_GID)
        self.pvcs[claim] = directory
        return directory

    def _object(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        store = self.cluster.secrets if kind == "Secret" else self.cluster.configmaps
        if (namespace, name) not in store:
            raise PodFailed(f'CreateContainerConfigError: {kind.lower()} "{name}" not found')
        return store[(namespace, name)]

    def _wait(
        self, process: subprocess.Popen, sandbox: Sandbox, plan: dict[str, Any], errors: Any, key: tuple
    ) -> list[int]:
        """Hand the sandbox its plan, wait for its nodes to end; their exit codes."""
        process.stdin.write(json.dumps(plan))
        process.stdin.close()
        reports = _sandbox_reports(process, sandbox)
        if process.returncode != 0 or not reports or "exit_codes" not in reports[-1]:
            errors.seek(0)
            raise RuntimeError(f"the sandbox failed: {errors.read()[-3000:]}")
        self.killed[key] = reports[-1]["killed"]
        self.first_failed[key] = reports[-1]["first_failed"]
        return reports[-1]["exit_codes"]

    def _env(self, namespace: str, container: dict[str, Any]) -> dict[str, str]:
        env = {  # the image's ENV, then the container's
            "PATH": IMAGE_PATH,
            "HOME": "/",
            "PYTHONPATH": "/opt/image/site-packages",
            "LD_LIBRARY_PATH": "/opt/image/python/lib",
            **self.extra_env,
        }
        for entry in container.get("env", []):
            if "value" in entry:
                env[entry["name"]] = entry["value"]
            elif ref := entry.get("valueFrom", {}).get("secretKeyRef"):
                data = self._object("Secret", namespace, ref["name"]).get("data", {})
                if ref["key"] not in data:
                    raise PodFailed(
                        f'CreateContainerConfigError: key "{ref["key"]}" not in secret "{ref["name"]}"'
                    )
                env[entry["name"]] = base64.b64decode(data[ref["key"]]).decode()
        return env

    def _mounts(
        self, namespace: str, pod: dict[str, Any], container: dict[str, Any], scratch: Path
    ) -> list[dict[str, Any]]:
        volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes", [])}
        mounts = []
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            read_only = bool(mount.get("readOnly"))
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if claim not in self.pvcs:
                    raise PodFailed(f'FailedScheduling: persistentvolumeclaim "{claim}" not found')
                mounts.append(
                    {
                        "kind": "pvc",
                        "source": str(self.pvcs[claim]),
                        "path": mount["mountPath"],
                        "read_only": read_only,
                    }
                )
            elif "configMap" in volume or "secret" in volume:
                kind, ref = (
                    ("ConfigMap", volume["configMap"])
                    if "configMap" in volume
                    else ("Secret", volume["secret"])
                )
                item = self._object(kind, namespace, ref.get("name") or ref.get("secretName"))
                files = scratch / mount["name"]
                files.mkdir(mode=0o755)
                for key, text in (item.get("data") or {}).items():
                    content = base64.b64decode(text) if kind == "Secret" else text.encode()
                    (files / key).write_bytes(content)
                for key, text in (item.get("binaryData") or {}).items():
                    (files / key).write_bytes(base64.b64decode(text))
                for path in files.iterdir():
                    os.chmod(path, ref.get("defaultMode", 0o644))
                mounts.append(
                    {"kind": kind, "source": str(files), "path": mount["mountPath"], "read_only": True}
                )
            elif "projected" in volume:
                files = scratch / mount["name"]
                files.mkdir(mode=0o755)
                self._project(namespace, pod, volume["projected"], files)
                mounts.append(
                    {"kind": "projected", "source": str(files), "path": mount["mountPath"], "read_only": True}
                )
            elif "emptyDir" in volume:
                mounts.append({"kind": "emptyDir", "path": mount["mountPath"]})
            else:
                raise PodFailed(f"the stand-in kubelet cannot mount volume {mount['name']}: {volume}")
        return mounts

    def _project(self, namespace: str, pod: dict[str, Any], projected: dict[str, Any], files: Path) -> None:
        """A projected volume's files: a service-account token the cluster's issuer signed for the
        audience asked (as the kubelet's TokenRequest gets it), and ConfigMap items."""
        for source in projected.get("sources", []):
            if token := source.get("serviceAccountToken"):
                minted = self.cluster.token_issuer().mint(
                    namespace,
                    [token["audience"]],
                    expires_in=token.get("expirationSeconds", 3600),
                    pod=pod["metadata"]["name"],
                )
                (files / token["path"]).write_text(minted)
            elif ref := source.get("configMap"):
                data = self._object("ConfigMap", namespace, ref["name"]).get("data") or {}
                for item in ref.get("items") or [{"key": key, "path": key} for key in data]:
                    (files / item["path"]).write_text(data[item["key"]])
        for path in files.iterdir():
            os.chmod(path, projected.get("defaultMode", 0o644))

    def run(
        self,
        namespace: str,
        name: str,
        pods: list[dict[str, Any]],
        *,
        container: str,
        hosts: list[str],
        on_started: Any = None,
    ) -> list[int]:
        """Run the pods of job ``name`` (rank order) to completion, or until :meth:`stop` deletes
        them; their exit codes.

        ``container`` runs the program; ``hosts`` are the DNS names of the pods, rank order.
        """
        node_name = container
        scratch = Path(tempfile.mkdtemp(prefix=f"kubelet-{name}-"))
        os.chmod(scratch, 0o755)
        nodes = []
        for pod in pods:
            container = next(c for c in pod["spec"]["containers"] if c["name"] == node_name)
            pod_name = pod["metadata"]["name"]
            log = scratch / f"{pod_name}.log"
            log.touch()
            self.cluster.pods[(namespace, pod_name)] = {
                "job": name,
                "log": log,
                "phase": "Running",
                "pod": pod,
            }
            nodes.append(
                {
                    "env": self._env(namespace, container),
                    "argv": container["command"] + container.get("args", []),
                    "log": str(log),
                    "grace_seconds": pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS),
                }
            )
        mounts = self._mounts(
            namespace,
            pods[0],
            next(c for c in pods[0]["spec"]["containers"] if c["name"] == node_name),
            scratch,
        )
        services = self.cluster.services()
        hosts_file = scratch / "hosts"
        hosts_file.write_text(
            "127.0.0.1 localhost\n"
            + "".join(
                f"127.0.0.1 {host} {pod['metadata']['name']}\n" for host, pod in zip(hosts, pods, strict=True)
            )
            + "".join(f"127.0.0.1 {service['host']}\n" for service in services)
        )
        plan = {
            "nodes": nodes,
            "mounts": mounts,
            "hosts_file": str(hosts_file),
            "services": services,
            "uid": POD_UID,
            "gid": POD_GID,
            "python_prefix": sys.base_prefix,
            "python_name": f"python{sys.version_info.major}.{sys.version_info.minor}",
            "site_packages": sysconfig.get_paths()["purelib"],
            "image_entries": list(image_entries()),
        }
        if on_started is not None:
            on_started()
        key = (namespace, name)
        self.stopped.discard(key)
        with (scratch / "sandbox.err").open("w+") as errors:
            # unshare execs the sandbox (no --fork): its PID is the sandbox's, which stop() signals
            process = subprocess.Popen(
                [
                    "unshare",
                    "--net",
                    "--mount",
                    "--propagation",
                    "private",
                    sys.executable,
                    str(Path(__file__).with_name("sandbox.py")),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )
            sandbox = self.sandboxes[key] = Sandbox(process)
            try:
                codes = self._wait(process, sandbox, plan, errors, key)
                for pod, code in zip(pods, codes, strict=False):
                    self.cluster.pods[(namespace, pod["metadata"]["name"])].update(
                        phase="Succeeded" if code == 0 else "Failed", exit_code=code
                    )
                if key in self.stopped:  # deleted: gone from the API once their containers ended
                    for pod in pods:
                        self.cluster.pods.pop((namespace, pod["metadata"]["name"]), None)
            finally:
                del self.sandboxes[key]
                sandbox.started.set()  # a sandbox that failed to start has nothing to stop
                sandbox.ended.set()
        return codes

"""Preemption on Kubernetes: the kubelet stand-in stops a job's pods as a cluster does, and the
wait reports a Kueue suspension after the start as "preempted, waiting for readmission".

The pods run in the stand-in kubelet's sandbox (tests/k8s/standin.py, tests/k8s/sandbox.py); the
jobs live in the real API server with the upstream CRDs, and are suspended as Kueue does it: a
PATCH of ``spec.suspend`` (``spec.runPolicy.suspend`` for a PyTorchJob).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends.base import JobStatus
from airflow_provider_sft.core.backends.kubernetes import KubernetesBackend, KubernetesConfig
from airflow_provider_sft.core.pod.protocol import node_prefix
from airflow_provider_sft.core.results.metrics import read_step_records
from tests.integration import test_training_pod, test_trainjob_trigger
from tests.integration.test_training_pod import CLAIM, POD_ENV, training_run
from tests.integration.test_trainjob_trigger import submit, trigger
from tests.k8s import standin
from tests.k8s.fake_core import KINDS as FAKE_KINDS

pvc = test_training_pod.pvc  # the workspace PVC with the tiny model and the dataset
connection = test_trainjob_trigger.connection  # an Airflow connection to the test cluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(standin.unavailable()), reason=str(standin.unavailable())),
]

#: A node that reports its own PID and a child's (a worker, as torchrun's), then waits. On SIGTERM
#: it says so, and stops as a preempted node does (``exit``) or keeps going (``ignore``).
PROBE = """
import os, signal, subprocess, sys, time
mode = sys.argv[1]
child = subprocess.Popen(["sleep", "600"])
def on_term(signum, frame):
    print(f"SIGTERM in {os.getpid()}", flush=True)
    if mode == "exit":
        print("ERROR: preempted: saved a full state at step 3", flush=True)
        sys.exit(75)
signal.signal(signal.SIGTERM, on_term)
print(f"node {os.getpid()} child {child.pid}", flush=True)
while True:
    time.sleep(0.05)
"""


def probe_job(name: str, mode: str, grace: int | None) -> dict:
    """A TrainJob of the probe on the upstream torch-distributed runtime, its grace period patched."""
    pod_spec = {} if grace is None else {"terminationGracePeriodSeconds": grace}
    node = {"name": "node", "template": {"spec": {"template": {"spec": pod_spec}}}}
    return {
        "metadata": {"name": name},
        "spec": {
            "runtimeRef": {"name": "torch-distributed"},
            "trainer": {"command": ["python", "-c", PROBE, mode]},
            "runtimePatches": [
                {
                    "manager": "test/probe",
                    "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [node]}}},
                }
            ],
        },
    }


def run_probe(cluster, namespace: str, name: str, mode: str, grace: int | None):
    """The probe's pod running in a thread; (its thread, its result holder, its log path)."""
    runtime = cluster.custom().get_cluster_custom_object(
        "trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", "torch-distributed"
    )
    pods, container, hosts = standin.job_pods(probe_job(name, mode, grace), runtime)
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(
            codes=cluster.kubelet.run(namespace, name, pods, container=container, hosts=hosts)
        )
    )
    thread.start()
    pod = pods[0]["metadata"]["name"]
    log = until(lambda: cluster.pods.get((namespace, pod), {}).get("log"))
    until(lambda: "child" in log.read_text())
    return thread, result, log, pod


def until(check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed and not yet reaped by init, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_stand_in_kubelet_sigterms_the_node_waits_its_grace_then_kills_it_and_its_pods_go(
    cluster, namespace
):
    thread, result, log, pod = run_probe(cluster, namespace, "stubborn", "ignore", grace=2)
    node, child = map(int, re.search(r"node (\d+) child (\d+)", log.read_text()).groups())
    started = time.monotonic()
    cluster.kubelet.stop(namespace, "stubborn")
    stopped_after = time.monotonic() - started
    thread.join(10)
    assert f"SIGTERM in {node}" in log.read_text()  # the node's own process got it, not only the sandbox
    assert 2.0 <= stopped_after < 6.0  # the pod's grace period, then SIGKILL
    assert result["codes"] == [137] and cluster.kubelet.killed[(namespace, "stubborn")] == [True]
    assert not alive(child)  # the container's other processes went with it
    assert (namespace, pod) not in cluster.pods  # deleted: gone from the core API


def test_a_node_that_stops_on_sigterm_is_not_waited_for_and_its_exit_code_is_kept(cluster, namespace):
    thread, result, log, _ = run_probe(cluster, namespace, "prompt", "exit", grace=None)  # default: 30 s
    started = time.monotonic()
    cluster.kubelet.stop(namespace, "prompt")
    assert time.monotonic() - started < 5.0
    thread.join(10)
    assert result["codes"] == [75] and cluster.kubelet.killed[(namespace, "prompt")] == [False]
    assert log.read_text().splitlines()[-1] == "ERROR: preempted: saved a full state at step 3"


# --- through the real API server: the waiter, the stand-in controllers and kubelet -------------


def patch_suspend(cluster, namespace: str, name: str, suspend: bool, kind: str = "TrainJob") -> None:
    """What Kueue does to preempt (``True``) and readmit (``False``) a job: a PATCH of its spec."""
    group, version, plural = FAKE_KINDS[kind]
    spec = {"runPolicy": {"suspend": suspend}} if kind == "PyTorchJob" else {"suspend": suspend}
    cluster.custom().patch_namespaced_custom_object(group, version, namespace, plural, name, {"spec": spec})


@pytest.mark.parametrize("nodes", [1, 2])
def test_a_running_trainjob_preempted_by_kueue_waits_for_readmission_and_completes(
    cluster, namespace, pvc, nodes
):
    """Suspended mid-training: the node saves its state on SIGTERM and says so, the wait says
    preempted (not a failure), the start timeout passes unheeded, the pods are gone while it waits;
    readmitted, new pods resume from the saved state and it succeeds with one continuous curve.
    On 2 nodes every node gets SIGTERM, they agree on the step, and node 0's log is the one shown."""
    training = training_run(f"preempted-{nodes}", num_epochs=3, resource_num_workers=nodes)
    sft_line = node_prefix(0, nodes)  # "[sft] ", or "[sft node 0/2] " on 2 nodes
    sft = KubernetesBackend(
        config=KubernetesConfig.build(namespace=namespace, pvc_name=CLAIM, start_timeout_seconds=4),
        connect=cluster.connect,
    )
    cluster.auto_run(namespace, extra_env=POD_ENV)
    handle = sft.submit(training)
    lines: list[str] = []
    outcome: dict = {}
    waiter = threading.Thread(
        target=lambda: outcome.update(result=sft.wait(handle, on_log=lines.append)), daemon=True
    )
    waiter.start()
    metrics = pvc / "runs" / training.name / c.METRICS_FILE
    until(lambda: metrics.exists() and len(read_step_records(metrics)[0]) >= 3, timeout=300)
    patch_suspend(cluster, namespace, training.name, True)
    preempted = until(lambda: next((line for line in lines if line.startswith("preempted, waiting")), None))
    # Kueue's spec.suspend may be read before the controller's condition: its reason, then maybe more
    assert preempted.startswith(
        f"preempted, waiting for readmission: TrainJob {training.name} was suspended after it started "
        "(Suspended"
    )
    assert preempted.endswith(
        "its pods are stopped. Not a failure, and no start timeout applies while it waits"
    )
    until(lambda: not any(info["job"] == training.name for info in cluster.pods.values()))  # deleted
    time.sleep(5)  # longer than start_timeout_seconds: a preempted job is not held to it
    assert waiter.is_alive() and "result" not in outcome
    patch_suspend(cluster, namespace, training.name, False)
    waiter.join(600)
    result = outcome["result"]
    assert result.succeeded, (result.message, lines[-20:])
    readmitted = next(
        i for i, line in enumerate(lines) if line.startswith("readmitted: the pods start again")
    )
    done = [i for i, line in enumerate(lines) if line.startswith(f"{sft_line}done in")]
    assert done and lines.index(preempted) < readmitted < done[-1], lines  # the new pods' log too
    # the pod side: saved on SIGTERM (before its pod went), then the new pod resumed from it
    saving = next(
        i for i, line in enumerate(lines) if line.startswith(f"{sft_line}preempted: SIGTERM received")
    )
    step = int(lines[saving].rpartition(" ")[2])
    resuming = next(i for i, line in enumerate(lines) if line.startswith(f"{sft_line}resuming from"))
    assert saving < readmitted < resuming < done[-1], lines
    assert f"at step {step}, " in lines[resuming], lines[resuming]
    # one run, one curve: every step recorded once, samples_seen carried on across the resume
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [row for row in rows if "avg_loss" in row]
    assert [row["step"] for row in steps] == list(range(1, len(steps) + 1))
    assert 3 <= step < len(steps)  # preempted mid-run
    per_step = {row["samples_seen"] - previous["samples_seen"] for previous, row in itertools.pairwise(steps)}
    assert min(per_step) > 0, per_step  # no step's samples counted twice or from zero again
    assert [row["step"] for row in rows if row.get("resumed")] == [step]  # the resume, marked once
    assert sum(line.startswith("preempted, waiting") for line in lines) == 1  # reported once
    assert not any("StartTimeout" in line or "did not start" in line for line in lines)
    # the same job never preempted: the resumed run is it, step for step and weight for weight
    unbroken = training_run(f"unbroken-{nodes}", num_epochs=3, resource_num_workers=nodes)
    result = sft.wait(sft.submit(unbroken), on_log=lambda line: None)
    assert result.succeeded, result.message
    expected = [
        row
        for row in map(json.loads, (pvc / "runs" / unbroken.name / c.METRICS_FILE).read_text().splitlines())
        if "avg_loss" in row
    ]
    assert [row["step"] for row in expected] == [row["step"] for row in steps]
    for got, want in zip(steps, expected, strict=True):
        assert got["avg_loss"] == pytest.approx(want["avg_loss"], abs=1e-6), got["step"]
        assert (got["samples_seen"], got["lr"]) == (want["samples_seen"], want["lr"]), got["step"]
    got, want = (final_checkpoint_weights(pvc / "runs" / run.name) for run in (training, unbroken))
    assert got.keys() == want.keys()
    assert max((got[key] - want[key]).abs().max().item() for key in want) <= 1e-6


def final_checkpoint_weights(run_dir: Path) -> dict:
    """The weights of a run's last ``hf_format/samples_<N>/`` checkpoint (the end of its last epoch)."""
    from safetensors.torch import load_file

    newest = max((run_dir / c.HF_FORMAT_DIR).iterdir(), key=lambda p: int(p.name.rpartition("_")[2]))
    return load_file(newest / "model.safetensors")


def test_a_node_stopped_without_a_suspension_fails_the_job_saying_preempted(cluster, namespace):
    """A spot node reclaimed or drained: its pod gets SIGTERM with no suspension, the node saves its
    state and exits 75 (``ERROR: preempted: ...``), the job fails; the task's failure says preempted
    and that a retry resumes."""
    job = probe_job("drained", "exit", grace=30)
    job.update(apiVersion="trainer.kubeflow.org/v1alpha1", kind="TrainJob")
    group, version, plural = FAKE_KINDS["TrainJob"]
    cluster.custom().create_namespaced_custom_object(group, version, namespace, plural, job)
    runner = threading.Thread(target=cluster.run_pods, args=(namespace, "drained"), daemon=True)
    runner.start()
    pod = "drained-node-0-0-00000"
    log = until(lambda: cluster.pods.get((namespace, pod), {}).get("log"))
    until(lambda: "child" in log.read_text())
    sft = KubernetesBackend(
        config=KubernetesConfig.build(namespace=namespace, pvc_name=CLAIM), connect=cluster.connect
    )
    lines: list[str] = []
    outcome: dict = {}
    handle = sft.handle("drained", "/workspace/runs/drained")
    waiter = threading.Thread(
        target=lambda: outcome.update(result=sft.wait(handle, on_log=lines.append)), daemon=True
    )
    waiter.start()
    until(lambda: any("TrainJob drained: running" in line for line in lines))
    cluster.kubelet.stop(namespace, "drained")  # the node is drained: no suspension
    runner.join(30)
    waiter.join(60)
    result = outcome["result"]
    assert result.status is JobStatus.FAILED
    assert result.message == (
        f"TrainJob {namespace}/drained failed: JobsFailed: container node of node 0 exited with code 75; "
        "the pod reported: preempted: saved a full state at step 3 (its node was stopped, not by a queue: "
        'a retry of the task resumes from the state it saved, with resume="auto")'
    )
    assert not any(line.startswith("preempted, waiting") for line in lines)  # not a suspension


def test_the_stand_in_names_the_node_that_failed_the_job_not_one_stopped_because_of_it(cluster, namespace):
    """JobSet's failure policy stops node 0 once node 1 fails; the job's message must name node 1
    (a 2-node flake once read "node 0 exited with code 143" for a worker that aborted)."""
    fail_on_node_1 = (
        "import os, sys, time\n"
        "if os.environ['PET_NODE_RANK'] == '1':\n    time.sleep(1); sys.exit(3)\n"
        "time.sleep(600)"
    )
    job = probe_job("node-1-fails", "unused", grace=2)
    job["spec"]["trainer"] = {"command": ["python", "-c", fail_on_node_1], "numNodes": 2}
    job.update(apiVersion="trainer.kubeflow.org/v1alpha1", kind="TrainJob")
    group, version, plural = FAKE_KINDS["TrainJob"]
    cluster.custom().create_namespaced_custom_object(group, version, namespace, plural, job)
    codes = cluster.run_pods(namespace, "node-1-fails")
    assert codes == [143, 3]  # node 0 SIGTERMed by the failure policy, after node 1 failed
    stored = cluster.custom().get_namespaced_custom_object(group, version, namespace, plural, "node-1-fails")
    (failed,) = [cond for cond in stored["status"]["conditions"] if cond["type"] == "Failed"]
    assert failed["message"] == "container node of node 1 exited with code 3"


# --- the deferrable wait: the trigger --------------------------------------------------------


class LogLines(list):
    """A trigger's logger that keeps its lines (the triggerer sends them to the task log)."""

    def _keep(self, message: str, *args) -> None:
        self.append(message % args if args else message)

    info = warning = error = exception = _keep


def run_trigger(trig, drive) -> tuple[dict, list[str]]:
    """The trigger's one event while ``drive`` acts on the cluster, and its log lines."""
    import asyncio

    lines = trig._log = LogLines()  # what LoggingMixin.log returns once set

    async def main() -> dict:
        task = asyncio.ensure_future(trig.run().__anext__())
        await asyncio.to_thread(drive)
        return (await asyncio.wait_for(task, 60)).payload

    return asyncio.run(main()), lines


def test_the_trigger_waits_out_a_preemption_past_its_start_deadline(cluster, namespace, connection, kind):
    name = "trig-job"
    submit(cluster, namespace, name, kind=kind)
    start_deadline = (datetime.now(timezone.utc) + timedelta(seconds=3)).isoformat()
    trig = trigger(namespace, connection, kind=kind, start_deadline=start_deadline, start_timeout_seconds=3)

    def drive() -> None:
        time.sleep(0.5)
        cluster.drive(namespace, name, "running", kind=kind)
        time.sleep(1)
        cluster.drive_suspension(namespace, name, kind, suspended=True)  # the condition read first
        patch_suspend(cluster, namespace, name, True, kind=kind)
        time.sleep(4)  # past the start deadline
        patch_suspend(cluster, namespace, name, False, kind=kind)
        cluster.drive_suspension(namespace, name, kind, suspended=False)
        cluster.drive(namespace, name, "running", kind=kind)
        cluster.drive(namespace, name, "complete", reason="JobsCompleted", kind=kind)

    event, lines = run_trigger(trig, drive)
    assert event["status"] == "success", event
    reason = {
        "TrainJob": "Suspended: TrainJob is suspended",
        "PyTorchJob": f"PyTorchJobSuspended: {kind} {name} is suspended.",
    }
    assert (
        f"preempted, waiting for readmission: {kind} {namespace}/{name} was suspended after it started ({reason[kind]})"
        in "\n".join(lines)
    )
    assert any(line.startswith("readmitted: the pods start again") for line in lines)


def test_a_restarted_trigger_knows_a_preempted_pytorchjob_from_its_conditions(cluster, namespace, connection):
    """The trigger starts (a triggerer restart) while the PyTorchJob is preempted and its start
    deadline long past: the operator's conditions say it ran, so it waits for readmission."""
    name = "trig-job"
    submit(cluster, namespace, name, kind="PyTorchJob")
    cluster.drive(namespace, name, "running", kind="PyTorchJob")
    patch_suspend(cluster, namespace, name, True, kind="PyTorchJob")
    cluster.drive_suspension(namespace, name, "PyTorchJob", suspended=True)
    past = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    trig = trigger(namespace, connection, kind="PyTorchJob", start_deadline=past, start_timeout_seconds=600)

    def drive() -> None:
        time.sleep(1.5)
        patch_suspend(cluster, namespace, name, False, kind="PyTorchJob")
        cluster.drive_suspension(namespace, name, "PyTorchJob", suspended=False)
        cluster.drive(namespace, name, "complete", reason="PyTorchJobSucceeded", kind="PyTorchJob")

    event, _ = run_trigger(trig, drive)
    assert event["status"] == "success", event


def test_a_trainjob_queued_before_it_started_still_times_out_on_start_timeout(cluster, namespace, connection):
    """Suspended from the start (Kueue's webhook suspends a job at creation; no queue admits it):
    the start timeout applies as before, with what to check."""
    name = "trig-job"
    submit(cluster, namespace, name)
    patch_suspend(cluster, namespace, name, True)
    cluster.drive_suspension(namespace, name, "TrainJob", suspended=True)
    start_deadline = (datetime.now(timezone.utc) + timedelta(seconds=2)).isoformat()
    trig = trigger(namespace, connection, start_deadline=start_deadline, start_timeout_seconds=2)
    event, lines = run_trigger(trig, lambda: None)
    assert event["status"] == "timeout"
    assert "stayed suspended for 2s: no queue admitted it" in event["message"]
    assert not any("preempted" in line for line in lines)

"""The training pod pushes its progress into the TrainJob's ``status.trainerStatus`` (KEP-2779).

A CPU TrainJob on the tiny model, run by the stand-in controller and kubelet with the Trainer's
``TrainJobStatus`` gate on: the pod gets the URL, CA and token the plugin injects, reaches the
stand-in status server (tests/k8s/status_server.py) through its Service name, and that server
applies each push to the REAL API server, whose upstream v2.3.0 CRD judges it.
"""

from __future__ import annotations

import threading

import pytest

from airflow_provider_sft.core.backends.kubernetes import KubernetesBackend, KubernetesConfig
from airflow_provider_sft.core.results.live_progress import progress_text
from tests.integration.test_training_pod import CLAIM, POD_ENV, backend, pod_log, pvc, training_run  # noqa: F401
from tests.k8s import standin

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(standin.unavailable()), reason=str(standin.unavailable())),
]
GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
#: The metric names of the contract (issue #23).
METRICS = {
    "step",
    "total_steps",
    "epoch",
    "num_epochs",
    "loss",
    "loss_smoothed",
    "learning_rate",
    "tokens_per_second",
    "samples_per_second",
    "samples_seen",
    "validation_loss",
}


def trainer_status_of(cluster, namespace: str, name: str) -> dict | None:
    job = cluster.custom().get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return (job.get("status") or {}).get("trainerStatus")


def test_the_trainjob_status_follows_the_run_to_100(cluster, namespace, pvc, trainer_status):  # noqa: F811
    training = training_run("progress", num_epochs=3)  # 90 steps of 8 samples
    sft = KubernetesBackend(  # the finished job is kept: its last status is read after the wait
        config=KubernetesConfig.build(namespace=namespace, pvc_name=CLAIM, delete_on_success=False),
        connect=cluster.connect,
    )
    handle = sft.submit(training)
    read: list[dict] = []  # status.trainerStatus as a client reads it while the pod trains
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.25):
            if (status := trainer_status_of(cluster, namespace, training.name)) is not None:
                read.append(status)

    said: list[str] = []  # what the wait writes to the task log, while the job runs and at its end
    outcome: dict = {}
    waiter = threading.Thread(
        target=lambda: outcome.update(
            result=sft.wait(
                handle,
                on_log=lambda line: None,
                on_progress=lambda seen: said.append(progress_text(seen.said)),
            )
        ),
        daemon=True,
    )
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    waiter.start()
    try:
        codes = cluster.run_pods(namespace, training.name, extra_env=POD_ENV)
    finally:
        done.set()
        poller.join()
    waiter.join(120)
    result = outcome["result"]
    final = trainer_status_of(cluster, namespace, training.name)
    node0 = pod_log(cluster, namespace, training.name, 0)
    assert codes == [0] and result.succeeded, node0[-3000:]

    percents = [status["progressPercentage"] for status in read]
    distinct = sorted(set(percents))
    assert len([p for p in distinct if p < 100]) >= 3, percents  # it advanced while it ran
    assert percents == sorted(percents)  # never backwards
    assert (final["progressPercentage"], final["estimatedRemainingSeconds"]) == (100, 0)
    metrics = {metric["name"]: metric["value"] for metric in final["metrics"]}
    assert set(metrics) <= METRICS and metrics["step"] == metrics["total_steps"] == "90"
    assert metrics["epoch"] == metrics["num_epochs"] == "3" and metrics["samples_seen"] == str(3 * 235)
    assert any(
        "estimatedRemainingSeconds" in status and status["progressPercentage"] < 100 for status in read
    )

    answered = [r for r in trainer_status.received if r.name == training.name]
    assert answered and all(r.code == 200 for r in answered), [(r.code, r.message) for r in answered]
    assert len(answered) <= 2 + result_seconds(node0) / 5  # at most one push every 5 s, and the end
    assert (
        "[sft] reporting progress to the TrainJob's status at https://kubeflow-trainer-controller-manager"
        ".kubeflow-system.svc:10443/apis/trainer.kubeflow.org/v1alpha1/namespaces/" in node0
    )
    assert "cannot report progress" not in node0
    # end to end: the pod's pushes, the status server, the job's status, the wait's lines
    assert said and all(line.endswith("(from status.trainerStatus)") for line in said), said
    assert said[-1].startswith("progress 100%: step 90/90, epoch 3/3, loss "), said


def result_seconds(log: str) -> float:
    """How long the pod trained, from its ``trained in`` line."""
    line = next(line for line in log.splitlines() if "] trained in " in line)
    return float(line.split("trained in ")[1].split("s")[0])


def test_a_run_whose_status_server_is_down_trains_to_the_end(cluster, namespace, pvc, trainer_status):  # noqa: F811
    trainer_status.stop()  # the gate is on, the variables injected; nothing answers
    training = training_run("server-down")
    sft = backend(cluster, namespace)
    handle = sft.submit(training)
    codes = cluster.run_pods(namespace, training.name, extra_env=POD_ENV)
    final = trainer_status_of(cluster, namespace, training.name)
    result = sft.wait(handle, on_log=lambda line: None)
    node0 = pod_log(cluster, namespace, training.name, 0)
    assert codes == [0] and result.succeeded, node0[-3000:]
    warnings = [line for line in node0.splitlines() if "cannot report progress" in line]
    assert warnings == [
        "[sft] warning: cannot report progress to the TrainJob's status (the status server is "
        "unreachable: Connection reset by peer); training goes on"
    ]
    assert "] done in " in node0 and final is None

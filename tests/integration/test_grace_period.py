"""The pods' grace period to save their state when preempted (``checkpoint_grace_seconds``), against
the REAL API server with the UPSTREAM CRDs under Strict field validation.

Trainer v2.3.0's runtime patches and the PyTorchJob v1.9.4 pod template carry
``terminationGracePeriodSeconds``; v2.1.0's ``podTemplateOverrides`` and v2.2.1's patches do not
(their Strict schema refuses it, shown below), so there the preflight warns in one line.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends.kubernetes import KubeApiError, SpecGeneration
from tests.integration.conftest import use_release
from tests.integration.test_kubernetes_backend import backend, make_run, patched_pod, stored, trainjobs

GRACE = 600
BACKEND_LOGGER = "airflow_provider_sft.core.backends.kubernetes.backend"


def grace_run(name="sft-grace-1", **values):
    return dataclasses.replace(make_run(name, **values), checkpoint_grace_seconds=GRACE)


def grace_warnings(caplog):
    return [r.getMessage() for r in caplog.records if "checkpoint_grace_seconds" in r.getMessage()]


def test_a_v23_trainjob_patches_the_grace_period_into_the_node_pods(fake_cluster, namespace, caplog):
    use_release(fake_cluster.server, "v2.3.0")
    with caplog.at_level(logging.WARNING, logger=BACKEND_LOGGER):
        handle = backend(fake_cluster, namespace).submit(grace_run(), timeout_seconds=3600)
    pod = patched_pod(stored(fake_cluster, namespace, handle.name))  # as stored: Strict, nothing pruned
    assert pod["spec"]["terminationGracePeriodSeconds"] == GRACE
    assert grace_warnings(caplog) == []


@pytest.mark.parametrize(("release", "generation"), [("v2.1.0", "v2.1"), ("v2.2.1", "v2.2")])
def test_before_v23_the_job_is_admitted_and_one_line_says_the_runtimes_30s_hold(
    fake_cluster, namespace, caplog, release, generation
):
    use_release(fake_cluster.server, release)
    with caplog.at_level(logging.WARNING, logger=BACKEND_LOGGER):
        handle = backend(fake_cluster, namespace).submit(grace_run(), timeout_seconds=3600)
    job = stored(fake_cluster, namespace, handle.name)
    assert "terminationGracePeriodSeconds" not in str(job)
    (line,) = grace_warnings(caplog)
    assert "\n" not in line
    assert f"Kubeflow Trainer {generation} TrainJob API" in line
    assert (
        "the pods get 30 s (Kubernetes' default: ClusterTrainingRuntime 'torch-distributed' sets none)"
        in line
    )
    assert "Upgrade Kubeflow Trainer to v2.3" in line
    assert f"terminationGracePeriodSeconds: {GRACE} in the node pod template" in line


def test_before_v23_the_runtimes_own_grace_period_is_named(fake_cluster, namespace, caplog):
    """A runtime that sets its own period: that one holds, and the line says so (none when it is long enough)."""
    use_release(fake_cluster.server, "v2.2.1")
    runtime = fake_cluster.custom().get_cluster_custom_object(
        c.TRAINER_GROUP, c.TRAINER_VERSION, "clustertrainingruntimes", "torch-distributed"
    )
    for name, seconds in (("short-grace", 120), ("long-grace", 1800)):
        node = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
        node["spec"]["terminationGracePeriodSeconds"] = seconds
        body = {
            "apiVersion": runtime["apiVersion"],
            "kind": "TrainingRuntime",
            "spec": runtime["spec"],
            "metadata": {"name": name, "namespace": namespace},
        }
        fake_cluster.custom().create_namespaced_custom_object(
            c.TRAINER_GROUP, c.TRAINER_VERSION, namespace, "trainingruntimes", body
        )
    with caplog.at_level(logging.WARNING, logger=BACKEND_LOGGER):
        backend(fake_cluster, namespace, runtime_kind="TrainingRuntime", runtime_name="short-grace").submit(
            grace_run("sft-grace-short")
        )
    (line,) = grace_warnings(caplog)
    assert "the pods get 120 s (set by TrainingRuntime 'short-grace')" in line
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=BACKEND_LOGGER):
        backend(fake_cluster, namespace, runtime_kind="TrainingRuntime", runtime_name="long-grace").submit(
            grace_run("sft-grace-long")
        )
    assert grace_warnings(caplog) == []


def test_v22_refuses_the_field_and_the_error_names_the_generation_to_set(fake_cluster, namespace):
    """Why v2.2 gets no grace period: its Strict schema has no such field in a runtime patch."""
    use_release(fake_cluster.server, "v2.2.1")
    with pytest.raises(KubeApiError) as info:
        backend(fake_cluster, namespace, SpecGeneration.V2_3).submit(grace_run())
    assert info.value.status == 400
    message = str(info.value)
    assert re.search(r'unknown field \\?"spec\.runtimePatches\[0\]\..*terminationGracePeriodSeconds', message)
    assert "spec_generation='v2.2'" in message
    assert trainjobs(fake_cluster, namespace) == []


@pytest.mark.parametrize("release", ["v2.1.0", "v2.3.0"])
def test_a_pytorchjob_carries_the_grace_period_on_master_and_workers(fake_cluster, namespace, release):
    use_release(fake_cluster.server, release)
    handle = backend(fake_cluster, namespace, job_kind="PyTorchJob").submit(grace_run(resource_num_workers=2))
    replicas = stored(fake_cluster, namespace, handle.name, "PyTorchJob")["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"}
    for replica in replicas.values():
        assert replica["template"]["spec"]["terminationGracePeriodSeconds"] == GRACE


@pytest.mark.parametrize(("release", "expected"), [("v2.3.0", GRACE), ("v2.2.1", None)])
def test_the_node_pods_the_controller_makes_get_it_from_the_v23_patch_only(
    fake_cluster, namespace, release, expected
):
    """Merged as the Trainer merges the runtime and the patch (tests/k8s/standin.py): the period the
    kubelet gives a preempted pod. None: Kubernetes' 30 s (the upstream runtime sets none)."""
    from tests.k8s.standin import merge_node_pods

    use_release(fake_cluster.server, release)
    handle = backend(fake_cluster, namespace).submit(grace_run(resource_num_workers=2))
    runtime = fake_cluster.custom().get_cluster_custom_object(
        c.TRAINER_GROUP, c.TRAINER_VERSION, "clustertrainingruntimes", "torch-distributed"
    )
    pods = merge_node_pods(stored(fake_cluster, namespace, handle.name), runtime)
    assert [pod["spec"].get("terminationGracePeriodSeconds") for pod in pods] == [expected, expected]


@pytest.mark.slow
def test_a_grace_period_out_of_range_is_refused_by_the_form_before_the_run_exists(tmp_path):
    """Through real Airflow (``airflow dags test``): the trigger's schema check names the field."""
    from airflow_provider_sft.demo import EXAMPLE_DAGS, run_pipeline

    workspace = tmp_path / "ws"
    conf = {"checkpoint_grace_seconds": 3601, "workspace": str(workspace), "resource_gpu_per_worker": 0}
    with pytest.raises(SystemExit):
        run_pipeline(workspace, EXAMPLE_DAGS, conf, echo=False)
    text = (workspace / "dags-test.log").read_text()
    assert "checkpoint_grace_seconds" in text and "3601" in text
    assert "task_id=validate" not in text  # no task ran
    assert not (workspace / "runs").exists()

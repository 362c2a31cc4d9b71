"""The one construction path: a backend is chosen by the type of its config, and the local
backend runs the workspace steps in this process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends import TRAINING_JOB_XCOM_KEY, Credentials, JobHandle
from airflow_provider_sft.core.backends.base import BackendName
from airflow_provider_sft.core.backends.factory import build_backend, config_type
from airflow_provider_sft.core.backends.kubernetes import KubernetesBackend, KubernetesConfig
from airflow_provider_sft.core.backends.local import LocalConfig, LocalProcessBackend
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.pod.steps import STEPS


def test_a_local_config_builds_the_local_backend_with_its_settings_and_secrets():
    config = LocalConfig(python="/opt/py/bin/python3", grace_period_seconds=3, poll_interval_seconds=0.2)
    backend = build_backend(config, credentials=Credentials(hf_token="hf_x", oci_pull_secret="{}"))
    assert type(backend) is LocalProcessBackend
    assert (backend.python, backend.grace_period_seconds, backend.poll_interval_seconds) == (
        "/opt/py/bin/python3",
        3,
        0.2,
    )
    assert backend.secret_env == {"HF_TOKEN": "hf_x"}  # a pull secret has no use in a process
    assert not backend.deferrable


def test_a_kubernetes_config_builds_the_kubernetes_backend_on_its_connection():
    config = KubernetesConfig.build(namespace="ml", pvc_name="ws", job_kind="PyTorchJob", image="img:1")
    credentials = Credentials(hf_token="hf_x")

    def connect():
        raise AssertionError("nothing is sent while building")

    backend = build_backend(config, credentials=credentials, connect=connect, run_labels={"k": "v"})
    assert type(backend) is KubernetesBackend
    assert backend.config is config and backend.connect is connect and backend.credentials is credentials
    assert backend.run_labels == {"k": "v"} and backend.deferrable
    assert backend.handle("r", "/workspace/runs/r") == JobHandle(
        BackendName.KUBERNETES, "r", "/workspace/runs/r", kind="PyTorchJob", namespace="ml"
    )


def test_without_a_connection_the_kubernetes_backend_reaches_the_cluster_of_the_environment(
    tmp_path, monkeypatch
):
    """The KFP pod's way: KUBERNETES_SERVER_URL + KUBERNETES_AUTH_TOKEN, read when the backend is built."""
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("KUBERNETES_SERVER_URL", "https://cluster.example:6443")
    monkeypatch.setenv("KUBERNETES_AUTH_TOKEN", "sa-token")
    monkeypatch.setenv("KUBERNETES_CA_CERT", str(tmp_path / "ca.crt"))
    backend = build_backend(KubernetesConfig.build(pvc_name="ws"))
    (configuration,) = backend.connect.args  # type: ignore[attr-defined]
    assert configuration.host == "https://cluster.example:6443"
    monkeypatch.delenv("KUBERNETES_SERVER_URL")
    from kubernetes_asyncio.config import ConfigException

    with pytest.raises(ConfigException, match="Service host/port is not set"):
        build_backend(KubernetesConfig.build(pvc_name="ws"))  # no cluster at all: refused now


@pytest.mark.parametrize("config", [SFTParams(), {"backend": "local"}, None])
def test_a_config_no_backend_takes_is_refused_naming_its_type_and_the_ones_that_work(config):
    with pytest.raises(TypeError) as error:
        build_backend(config)  # type: ignore[arg-type]
    message = str(error.value)
    assert type(config).__name__ in message
    assert "LocalConfig" in message and "KubernetesConfig" in message


def test_a_backend_name_stands_for_its_config_type_and_an_unknown_one_names_the_field():
    assert config_type("local") is LocalConfig
    assert config_type("kubernetes") is KubernetesConfig
    assert config_type(BackendName.KUBERNETES) is KubernetesConfig
    with pytest.raises(InvalidParameterError) as error:
        config_type("slurm")
    assert error.value.errors == {"backend": "must be one of ['local', 'kubernetes'], got 'slurm'"}


def test_the_local_backend_runs_a_workspace_step_in_this_process(tmp_path):
    source = tmp_path / "chat.jsonl"
    records = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(3)
    ]
    source.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    lines: list[str] = []
    result = build_backend(LocalConfig()).run_step(
        "resolve",
        "unused-job-name",
        {"source": str(source), "workspace": str(tmp_path / "ws"), "settings": {}},
        on_log=lines.append,
    )
    assert result["records"] == 3 and Path(result["path"]).is_file()
    assert Path(result["path"]).is_relative_to(tmp_path / "ws")
    assert lines  # the step's own lines go to on_log


def test_a_steps_secrets_reach_the_step_and_never_this_process_environment(monkeypatch):
    seen: dict[str, str] = {}

    def probe(config, *, log, env):
        seen.update({name: env[name] for name in ("HF_TOKEN", "S3_SECRET") if name in env})
        log("probed")
        return {"ok": config["x"]}

    monkeypatch.setitem(STEPS, "probe", probe)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    backend = build_backend(
        LocalConfig(), credentials=Credentials(hf_token="hf_step", env={"S3_SECRET": "s3_step"})
    )
    lines: list[str] = []
    assert backend.run_step("probe", "job", {"x": 1}, on_log=lines.append) == {"ok": 1}
    assert seen == {"HF_TOKEN": "hf_step", "S3_SECRET": "s3_step"} and lines == ["probed"]
    assert "HF_TOKEN" not in os.environ and "S3_SECRET" not in os.environ


# --- the job handle ---------------------------------------------------------------------------

#: Handles as the previous version pushed them to XCom and serialized them into triggers.
OLD_TRAINJOB = {
    "backend": "kubernetes",
    "name": "r",
    "output_dir": "/w/runs/r",
    "namespace": "ml",
    "kind": "TrainJob",
}
OLD_PYTORCHJOB = {**OLD_TRAINJOB, "kind": "PyTorchJob"}
OLD_BEFORE_KINDS = {k: v for k, v in OLD_TRAINJOB.items() if k != "kind"}  # before PyTorchJobs
OLD_LOCAL = {"backend": "local", "name": "r", "output_dir": "/w/runs/r", "pid": 4242}


@pytest.mark.parametrize(
    ("old", "handle"),
    [
        (OLD_TRAINJOB, JobHandle(BackendName.KUBERNETES, "r", "/w/runs/r", kind="TrainJob", namespace="ml")),
        (
            OLD_PYTORCHJOB,
            JobHandle(BackendName.KUBERNETES, "r", "/w/runs/r", kind="PyTorchJob", namespace="ml"),
        ),
        (
            OLD_BEFORE_KINDS,
            JobHandle(BackendName.KUBERNETES, "r", "/w/runs/r", kind="TrainJob", namespace="ml"),
        ),
        (OLD_LOCAL, JobHandle(BackendName.LOCAL, "r", "/w/runs/r", pid=4242)),
    ],
    ids=["trainjob", "pytorchjob", "before-kinds", "local"],
)
def test_a_handle_the_previous_version_wrote_is_read_as_the_typed_handle(old, handle):
    assert JobHandle.from_dict(old) == handle
    assert JobHandle.from_dict(handle.to_dict()) == handle


def test_a_handle_keeps_the_flat_shape_earlier_versions_read_and_only_what_applies():
    cluster = JobHandle(BackendName.KUBERNETES, "r", "/w/runs/r", kind="TrainJob", namespace="ml", uid="u-1")
    assert cluster.to_dict() == {**OLD_TRAINJOB, "uid": "u-1"}
    assert JobHandle.from_dict(json.loads(json.dumps(cluster.to_dict()))) == cluster  # JSON-safe
    assert JobHandle(BackendName.LOCAL, "r", "/w/runs/r", pid=4242).to_dict() == OLD_LOCAL
    created = JobHandle(BackendName.KUBERNETES, "r", "/w", kind="TrainJob", created="2026-12-06T03:30:00Z")
    assert JobHandle.from_dict(created.to_dict()).created == "2026-12-06T03:30:00Z"  # crosses deferral
    assert TRAINING_JOB_XCOM_KEY == "training_job"  # the key earlier versions pushed it under


def test_a_handle_is_immutable():
    handle = JobHandle.from_dict(OLD_LOCAL)
    with pytest.raises(AttributeError):
        handle.pid = 1  # type: ignore[misc]
    assert JobHandle.from_dict(OLD_BEFORE_KINDS).kind == c.TRAINJOB_KIND

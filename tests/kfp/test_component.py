"""The KFP shim keeps the seed component's exact interface and runs on the shared core.

Runs in .venv-kfp (kfp 2.17.0, no Airflow): scripts/test.sh creates it.
"""

import inspect
import json
import os
import re
import typing
from pathlib import Path

import pytest
import yaml
from kfp import compiler, dsl, local
from kfp.dsl.types import type_annotations

from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.sample_data import bundled_dataset_path
from airflow_provider_sft.core.training.data_report import DataGateError
from airflow_provider_sft.kfp import BASE_IMAGE, PACKAGES_TO_INSTALL, make_train_model, train_model
from airflow_provider_sft.kfp.runner import run_train_model
from tests.conftest import REPO_ROOT

SHARED_SEED = REPO_ROOT.parent / "shared" / "seed" / "sft-component.md"
VENDORED_SEED = Path(__file__).with_name("seed-sft-component.md")


def seed_table() -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) rows of the seed's Inputs table."""
    text = (SHARED_SEED if SHARED_SEED.exists() else VENDORED_SEED).read_text()
    section = text.split("## Inputs", 1)[1].split("## Outputs", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows.append(tuple(cell.strip("`") for cell in cells))
    return rows


def test_vendored_seed_is_the_shared_one():
    if SHARED_SEED.exists():
        assert VENDORED_SEED.read_text() == SHARED_SEED.read_text()


def annotation_text(annotation) -> str:
    """The seed table's spelling of a parameter annotation."""
    if annotation is dsl.TaskConfig:
        return "dsl.TaskConfig"
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:  # dsl.Input[...] / dsl.Output[...]
        artifact, marker = typing.get_args(annotation)
        kind = "Output" if marker is type_annotations.OutputAnnotation else "Input"
        return f"dsl.{kind}[dsl.{artifact.__name__}]"
    if origin is typing.Union:
        (inner,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return f"Optional[{inner.__name__}]"
    return annotation.__name__


def default_text(parameter: inspect.Parameter) -> str:
    if parameter.default is inspect.Parameter.empty:
        return "Required"
    value = parameter.default
    if value is None:
        return "None"
    if value == "" or (isinstance(value, str) and value.isdigit()):
        return json.dumps(value)  # the table quotes "" and "4"
    return str(value)


def test_signature_matches_the_seed_table_exactly():
    rows = seed_table()
    parameters = list(inspect.signature(train_model.python_func).parameters.values())
    assert [p.name for p in parameters] == [row[0] for row in rows]  # names and order
    for parameter, (name, type_text, default, description) in zip(parameters, rows, strict=True):
        assert annotation_text(parameter.annotation) == type_text, name
        expected_default = (
            default.strip('"')
            if default.startswith('"') and default != '""' and not default.strip('"').isdigit()
            else default
        )
        assert default_text(parameter) == expected_default, name
        assert description in inspect.getdoc(train_model.python_func), name
    assert inspect.signature(train_model.python_func).return_annotation is str
    assert len(rows) == 29


def test_nothing_is_installed_when_the_step_starts():
    """The default needs no index: the base image has the provider and kfp (deploy/Containerfile.kfp)."""
    container = train_model.component_spec.implementation.container
    assert PACKAGES_TO_INSTALL == []
    assert container.image == BASE_IMAGE and BASE_IMAGE.startswith("airflow-provider-sft-kfp:")
    assert "pip install" not in " ".join(container.command)
    custom = make_train_model(
        base_image="python:3.11", packages_to_install=["airflow-provider-sft @ file:///wheels/x.whl"]
    )
    assert "file:///wheels/x.whl" in " ".join(custom.component_spec.implementation.container.command)
    containerfile = (Path(__file__).parents[2] / "deploy" / "Containerfile.kfp").read_text()
    assert "kfp==2.17.0" in containerfile and "/tmp/src[data]" in containerfile


def test_seed_example_pipeline_compiles(tmp_path):
    @dsl.pipeline(
        name="my-sft-pipeline", pipeline_config=dsl.PipelineConfig(workspace=dsl.WorkspaceConfig(size="10Gi"))
    )
    def my_pipeline():
        train_model(
            pvc_path=dsl.WORKSPACE_PATH_PLACEHOLDER,
            training_base_model="Qwen/Qwen2.5-1.5B-Instruct",
            training_num_epochs=1,
            training_effective_batch_size=128,
            training_max_seq_len=8192,
            training_max_tokens_per_gpu=10000,
        )

    package = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(my_pipeline, str(package))
    spec, *_platform = yaml.safe_load_all(package.read_text())  # pipeline spec, then platform spec
    component = spec["components"]["comp-train-model"]
    parameters = component["inputDefinitions"]["parameters"]
    assert parameters["training_effective_batch_size"] == {
        "defaultValue": 128.0,
        "description": "Effective batch size per optimizer step.",
        "isOptional": True,
        "parameterType": "NUMBER_INTEGER",
    }
    described = {**parameters, **component["inputDefinitions"]["artifacts"]}
    for name, _type, _default, description in seed_table():
        if name in described:
            assert described[name].get("description") == description, name
    assert parameters["training_learning_rate"]["parameterType"] == "NUMBER_DOUBLE"
    assert parameters["training_envs"]["defaultValue"] == ""
    assert parameters["pvc_path"]["parameterType"] == "STRING" and "isOptional" not in parameters["pvc_path"]
    assert parameters["kubernetes_config"]["parameterType"] == "TASK_CONFIG"
    assert (
        component["inputDefinitions"]["artifacts"]["dataset"]["artifactType"]["schemaTitle"]
        == "system.Dataset"
    )
    outputs = component["outputDefinitions"]
    assert {name: a["artifactType"]["schemaTitle"] for name, a in outputs["artifacts"].items()} == {
        "output_model": "system.Model",
        "output_metrics": "system.Metrics",
        "output_loss_chart": "system.HTML",
    }
    assert outputs["parameters"]["Output"]["parameterType"] == "STRING"


class Artifact:
    """Stands in for a KFP output artifact when the runner is called directly."""

    def __init__(self, path):
        self.path, self.metadata, self.metrics, self.name = str(path), {}, {}, ""

    def log_metric(self, key, value):
        self.metrics[key] = value


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"training_envs": "K"}, "training_envs: item 1 is not KEY=VALUE", id="envs"),
        pytest.param(
            {"training_resource_cpu_per_worker": "abc"},
            "training_resource_cpu_per_worker: must be a Kubernetes quantity",
            id="cpu",
        ),
        pytest.param(
            {"training_fsdp_sharding_strategy": "ALL"},
            "training_fsdp_sharding_strategy: must be one of",
            id="fsdp",
        ),
    ],
)
def test_bad_inputs_fail_before_any_work(tmp_path, kwargs, message):
    pvc = tmp_path / "pvc"
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        run_train_model(
            pvc_path=str(pvc),
            output_model=Artifact(tmp_path / "m"),
            output_metrics=Artifact(tmp_path / "x"),
            output_loss_chart=Artifact(tmp_path / "c.html"),
            **kwargs,
        )
    assert not pvc.exists()


def dataset_artifact(tmp_path):
    """A real ``dsl.Dataset`` whose file exists: resolving it would write ``<pvc>/dataset/``."""
    data = tmp_path / "artifact" / "data"
    data.parent.mkdir()
    data.write_bytes(bundled_dataset_path().read_bytes())
    return dsl.Dataset(name="dataset", uri=str(data), metadata={})


def run_with(tmp_path, **kwargs):
    return run_train_model(
        pvc_path=str(tmp_path / "pvc"),
        output_model=Artifact(tmp_path / "m"),
        output_metrics=Artifact(tmp_path / "x"),
        output_loss_chart=Artifact(tmp_path / "c.html"),
        dataset=dataset_artifact(tmp_path),
        **kwargs,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param(
            {"training_resource_num_workers": 2},
            "training_resource_num_workers: the local backend runs one worker, got 2",
            id="workers",
        ),
        pytest.param(
            {"training_use_liger": True},
            "training_use_liger: Liger kernels need CUDA; set training_use_liger=false to train on the CPU",
            id="liger",
        ),
    ],
)
def test_what_the_local_backend_refuses_is_refused_before_the_dataset_is_written(
    tmp_path, monkeypatch, kwargs, message
):
    monkeypatch.setenv("SFT_BACKEND", "local")
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        run_with(tmp_path, training_resource_gpu_per_worker=0, **kwargs)
    assert not (tmp_path / "pvc").exists()  # no dataset/, no runs/


def test_an_unknown_sft_backend_is_refused_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_BACKEND", "slurm")
    message = "SFT_BACKEND: must be one of ['local', 'kubernetes'], got 'slurm'"
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        run_with(tmp_path, training_resource_gpu_per_worker=0)
    assert not (tmp_path / "pvc").exists()


@pytest.mark.parametrize(
    ("task_config", "message"),
    [
        pytest.param(
            {"resources": {"limits": {"cpu": "16"}}},
            "kubernetes_config.resources.limits.cpu: '16' disagrees with '4' from training_resource_cpu_per_worker",
            id="resources",
        ),
        pytest.param(
            {"volumes": [], "volume_mounts": []},
            "kubernetes_config.volumes: is required on the kubernetes backend",
            id="no-pvc",
        ),
    ],
)
def test_what_the_kubernetes_backend_refuses_is_refused_before_the_dataset_is_written(
    tmp_path, monkeypatch, task_config, message
):
    monkeypatch.setenv("SFT_BACKEND", "kubernetes")
    monkeypatch.setenv("KUBERNETES_SERVER_URL", "https://127.0.0.1:9")  # never reached: refused first
    monkeypatch.setenv("KUBERNETES_AUTH_TOKEN", "unused")
    monkeypatch.setenv("KUBERNETES_CA_CERT", str(tmp_path / "ca.crt"))
    pvc = str(tmp_path / "pvc")
    config = {
        "volumes": [{"name": "ws", "persistentVolumeClaim": {"claimName": "pipeline-ws"}}],
        "volume_mounts": [{"name": "ws", "mountPath": pvc}],
        **task_config,
    }
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        run_with(tmp_path, kubernetes_config=dsl.TaskConfig(**config))
    assert not (tmp_path / "pvc").exists()


@dsl.component(packages_to_install=[], install_kfp_package=False, base_image="python:3.11")
def bundled_dataset(data: dsl.Output[dsl.Dataset]):
    """Writes the chat dataset shipped with the provider as a Dataset artifact."""
    import shutil

    from airflow_provider_sft.core.sample_data import bundled_dataset_path

    shutil.copy(bundled_dataset_path(), data.path)


@pytest.mark.slow
def test_kfp_local_run_end_to_end(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_BACKEND", "local")  # the embedded backend: no cluster here
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "outputs"))
    component = make_train_model(packages_to_install=[], install_kfp_package=False)  # already installed here
    pvc = tmp_path / "pvc"

    @dsl.pipeline(name="sft-local")
    def pipeline():
        data = bundled_dataset()
        component(
            pvc_path=str(pvc),
            dataset=data.outputs["data"],
            training_base_model=str(tiny_model),
            training_effective_batch_size=32,
            training_max_seq_len=512,
            training_max_tokens_per_gpu=4096,
            training_learning_rate=1e-3,
            training_resource_gpu_per_worker=0,
            training_resource_cpu_per_worker="1",
            training_resource_memory_per_worker="8Gi",
            # kfp.local 2.17.0 casts every Optional[int] input with int(), so None defaults crash it
            # (executor_input_utils.py); remote KFP passes them through. Give them values here.
            training_lr_warmup_steps=2,
            training_num_epochs=1,
            training_seed=7,
            training_save_samples=0,
        )

    pipeline()
    (task_dir,) = (tmp_path / "outputs").glob("sft-local-*/train-model")
    executor = json.loads((task_dir / "executor_output.json").read_text())
    assert executor["parameterValues"]["Output"] == "training completed"

    from transformers import AutoModelForCausalLM

    model_dir = task_dir / "output_model"
    assert AutoModelForCausalLM.from_pretrained(model_dir).num_parameters() > 0
    assert (model_dir / "sft_manifest.json").exists()
    # the same model card as an Airflow export's, in the manifest: KFP's launcher uploads it
    card = (model_dir / "README.md").read_text()
    assert card.startswith("---\n") and "sft" in card.split("---")[1]
    assert "README.md" in json.loads((model_dir / "sft_manifest.json").read_text())["files"]
    model_meta = executor["artifacts"]["output_model"]["artifacts"][0]["metadata"]
    assert executor["artifacts"]["output_model"]["artifacts"][0]["name"] == f"{tiny_model}-checkpoint"
    assert model_meta["model_name"] == str(tiny_model)  # and the original's metadata keys
    assert model_meta["pvc_model_dir"] == str(pvc / "final_model") and model_meta["artifact_path"]
    assert model_meta["base_model"] == str(tiny_model) and model_meta["pvc_model_path"] == str(
        pvc / "final_model"
    )
    assert (pvc / "final_model" / "model.safetensors").exists()  # as the original: <pvc>/final_model

    metrics = executor["artifacts"]["output_metrics"]["artifacts"][0]["metadata"]
    assert {"final_loss", "min_loss", "perplexity", "steps", "total_tokens", "runtime_seconds"} <= set(
        metrics
    )
    assert metrics["steps"] == 8 and metrics["min_loss"] <= metrics["final_loss"]
    # the data was prepared (and judged) before the training job, through the same core
    assert metrics["data_input_samples"] == metrics["data_kept_samples"] == 235
    assert metrics["data_dropped_samples"] == 0 and metrics["data_total_steps"] == 8
    summary = json.loads((pvc / "metrics.json").read_text())
    assert summary["data"]["kept_samples"] == 235 and sum(summary["data"]["histogram"]["counts"]) == 235
    efficiency = summary["efficiency"]  # the local backend's start: the time to the first step counts from it
    assert efficiency["device"] == "cpu" and efficiency["tokens_per_second"] > 0
    assert efficiency["time_to_first_step_from"] == "job_created" and efficiency["mfu"] is None

    html = (task_dir / "output_loss_chart").read_text()
    assert "Plotly.newPlot" in html and not re.search(r"<script[^>]+src=[\"']?https?:", html)
    assert '<table id="sft-efficiency"' in html


def test_bad_input_fails_the_kfp_task_with_the_core_message(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("SFT_BACKEND", "local")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "outputs"))
    component = make_train_model(packages_to_install=[], install_kfp_package=False)
    pvc = tmp_path / "pvc"

    @dsl.pipeline(name="sft-bad-input")
    def pipeline():
        component(
            pvc_path=str(pvc),
            training_envs="K",
            training_resource_cpu_per_worker="abc",
            training_lr_warmup_steps=0,
            training_num_epochs=1,
            training_seed=1,
            training_save_samples=0,
        )

    with pytest.raises(RuntimeError, match="Inner task failed"):
        pipeline()
    out = capfd.readouterr().out
    assert "training_envs: item 1 is not KEY=VALUE" in out
    assert "training_resource_cpu_per_worker: must be a Kubernetes quantity" in out
    assert not pvc.exists()  # nothing was started or written


@pytest.mark.parametrize("pvc_path", ["/", "/etc", "/usr/local", "/home"])
def test_a_system_pvc_path_is_refused_before_anything_is_created(tmp_path, pvc_path):
    before = sorted(os.listdir(pvc_path))
    with pytest.raises(InvalidParameterError, match=r"pvc_path: '/[a-z/]*' .*refused, nothing was touched"):
        run_train_model(
            pvc_path=pvc_path,
            output_model=Artifact(tmp_path / "m"),
            output_metrics=Artifact(tmp_path / "x"),
            output_loss_chart=Artifact(tmp_path / "c.html"),
            dataset=Artifact(bundled_dataset_path()),  # without the check: resolved into <pvc_path>/dataset
        )
    assert sorted(os.listdir(pvc_path)) == before  # no dataset/, no runs/


def readme_kfp_example() -> str:
    """The Python block of the README's Kubeflow Pipelines section, as a reader copies it."""
    section = (REPO_ROOT / "README.md").read_text().split("## From Kubeflow Pipelines", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_kfp_example_compiles_with_kfp(tmp_path):
    """Copied as it stands, it compiles with the real compiler (kfp 2.17 needs the workspace's size)."""
    namespace: dict = {}
    exec(compile(readme_kfp_example(), "README.md", "exec"), namespace)
    package = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(namespace["my_pipeline"], str(package))
    spec, *_platform = yaml.safe_load_all(package.read_text())
    assert "comp-train-model" in spec["components"]
    task = spec["root"]["dag"]["tasks"]["train-model"]
    assert (
        task["inputs"]["parameters"]["pvc_path"]["runtimeValue"]["constant"] == dsl.WORKSPACE_PATH_PLACEHOLDER
    )


def test_the_gate_stops_the_kfp_run_before_training(tiny_model, tmp_path, monkeypatch):
    """Samples at or over max_seq_len: the shim fails before the training job exists, and
    SFT_MAX_DROPPED_FRACTION (the signature is the seed's) is the share it allows."""
    monkeypatch.setenv("SFT_BACKEND", "local")
    common = {
        "training_base_model": str(tiny_model),
        "training_max_seq_len": 60,  # the bundled samples run to 112 tokens
        "training_max_tokens_per_gpu": 4096,
        "training_resource_gpu_per_worker": 0,
        "training_resource_cpu_per_worker": "1",
    }
    with pytest.raises(DataGateError, match=r"more than SFT_MAX_DROPPED_FRACTION=0\.02 allows") as caught:
        run_with(tmp_path, **common)
    assert "would keep 99% of the samples" in str(caught.value)
    assert not list((tmp_path / "pvc" / "runs").glob("*/training_params_and_metrics_global0.jsonl"))
    monkeypatch.setenv("SFT_MAX_DROPPED_FRACTION", "2")
    (tmp_path / "again").mkdir()
    with pytest.raises(InvalidParameterError, match="SFT_MAX_DROPPED_FRACTION: must be a number from 0 to 1"):
        run_with(tmp_path / "again", **common)
    assert not (tmp_path / "again" / "pvc").exists()  # refused before anything was written


def test_a_bad_sft_resume_is_refused_naming_the_variable_before_anything_is_written(tmp_path, monkeypatch):
    """resume reaches the KFP component through SFT_RESUME: its signature is the seed's."""
    monkeypatch.setenv("SFT_BACKEND", "local")
    monkeypatch.setenv("SFT_RESUME", "sometimes")
    with pytest.raises(
        InvalidParameterError, match="SFT_RESUME: must be one of 'auto', 'never', got 'sometimes'"
    ):
        run_with(tmp_path, training_resource_gpu_per_worker=0, training_resource_cpu_per_worker="1")
    assert not (tmp_path / "pvc").exists()

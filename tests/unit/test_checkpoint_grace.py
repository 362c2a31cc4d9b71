"""``checkpoint_grace_seconds``: its default from the model's size, one error naming it (operator,
form, KFP variable, validate task), and where it lands in each manifest."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends.kubernetes import SpecGeneration
from airflow_provider_sft.core.backends.kubernetes.admission import grace_period_warning
from airflow_provider_sft.core.backends.kubernetes.config import KubernetesConfig
from airflow_provider_sft.core.backends.kubernetes.manifest import build_trainjob, step_work, training_work
from airflow_provider_sft.core.checkpoint_grace import (
    MAX_CHECKPOINT_GRACE_SECONDS,
    checked_checkpoint_grace_seconds,
    default_checkpoint_grace_seconds,
    grace_for_parameters,
    parameter_count,
)
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.run import TrainingRun
from airflow_provider_sft.demo import EXAMPLE_DAGS

BAD = [0, -30, 3601, 1.5, "abc", "10s", True]
GOOD = [1, 300, MAX_CHECKPOINT_GRACE_SECONDS]


def write_model(directory, shapes):
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    for index, group in enumerate(shapes):
        tensors = {f"w{index}_{n}": np.zeros(shape, dtype=np.float16) for n, shape in enumerate(group)}
        save_file(tensors, str(directory / f"model-{index:05d}.safetensors"))
    return directory


def test_the_arithmetic_16_bytes_per_parameter_at_200_mb_per_s_with_margin_and_a_step_in_flight():
    # 1.54e9 x 16 B = 24.7 GB / 200 MB/s = 123.5 s x 1.5 = 185 s + 60 s = 245 s -> 270 s
    assert grace_for_parameters(1_543_714_304) == 270
    assert grace_for_parameters(7_000_000_000) == 900 == c.DEFAULT_CHECKPOINT_GRACE_SECONDS
    assert grace_for_parameters(70_000_000_000) == MAX_CHECKPOINT_GRACE_SECONDS  # capped


def test_a_local_models_size_is_counted_from_its_safetensors_headers_across_shards(tmp_path):
    model = write_model(tmp_path / "m", [[(1000, 2000), (7,)], [(3000, 4000)]])
    assert parameter_count(model) == 1000 * 2000 + 7 + 3000 * 4000
    # 14 M parameters is far below a step's 60 s: 90 s
    assert default_checkpoint_grace_seconds(str(model)) == grace_for_parameters(14_000_007) == 90
    assert checked_checkpoint_grace_seconds(None, base_model=str(model)) == 90


@pytest.mark.parametrize("base_model", ["Qwen/Qwen2.5-1.5B-Instruct", "/not/here", None])
def test_an_unknown_size_gets_the_7b_default(base_model, tmp_path):
    assert checked_checkpoint_grace_seconds("", base_model=base_model) == c.DEFAULT_CHECKPOINT_GRACE_SECONDS
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    assert default_checkpoint_grace_seconds(str(tmp_path)) == c.DEFAULT_CHECKPOINT_GRACE_SECONDS


@pytest.mark.parametrize("bad", BAD)
def test_a_bad_value_is_one_error_naming_the_field(bad):
    with pytest.raises(InvalidParameterError) as info:
        checked_checkpoint_grace_seconds(bad)
    assert list(info.value.errors) == ["checkpoint_grace_seconds"]
    assert f"from 1 to {MAX_CHECKPOINT_GRACE_SECONDS}" in str(info.value) and repr(bad) in str(info.value)


def test_text_from_a_template_or_conf_is_read_as_seconds():
    assert checked_checkpoint_grace_seconds("600") == 600 == checked_checkpoint_grace_seconds(600.0)


def test_the_run_config_carries_it_and_an_old_config_reads_the_default():
    run = TrainingRun("r1", SFTParams.parse({}), "/d.jsonl", "/w/runs/r1", checkpoint_grace_seconds=420)
    data = run.to_json_dict()
    assert data["checkpoint_grace_seconds"] == 420
    assert TrainingRun.from_json_dict(data) == run
    del data["checkpoint_grace_seconds"]
    assert TrainingRun.from_json_dict(data).checkpoint_grace_seconds == c.DEFAULT_CHECKPOINT_GRACE_SECONDS


# --- manifests ---------------------------------------------------------------------------------


def _config(**values):
    return KubernetesConfig.build(namespace="ml", pvc_name="ws", **values)


def _node_pod_spec(job):
    if "podTemplateOverrides" in job["spec"]:
        return job["spec"]["podTemplateOverrides"][0]["spec"]
    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    return patch["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    ("generation", "carried"),
    [(SpecGeneration.V2_1, False), (SpecGeneration.V2_2, False), (SpecGeneration.V2_3, True)],
)
def test_the_trainjob_carries_the_grace_period_where_its_generation_has_the_field(generation, carried):
    run = TrainingRun("r1", SFTParams.parse({}), "/d.jsonl", "/w/runs/r1", checkpoint_grace_seconds=420)
    job = build_trainjob(training_work(run, _config(), labels={}), _config(), generation=generation)
    assert _node_pod_spec(job).get("terminationGracePeriodSeconds") == (420 if carried else None)


def test_a_workspace_step_saves_nothing_and_keeps_the_runtimes_period():
    job = build_trainjob(
        step_work("r1-export", "export", _config(), labels={}), _config(), generation=SpecGeneration.V2_3
    )
    assert "terminationGracePeriodSeconds" not in _node_pod_spec(job)


def test_a_pytorchjob_template_carries_it():
    from airflow_provider_sft.core.backends.kubernetes.pytorchjob import build_pytorchjob

    config = _config(job_kind="PyTorchJob", image="quay.io/x/y:1")
    params = SFTParams.parse({"resource_num_workers": 2})
    run = TrainingRun("r1", params, "/d.jsonl", "/w/runs/r1", checkpoint_grace_seconds=420)
    replicas = build_pytorchjob(training_work(run, config, labels={}), config)["spec"]["pytorchReplicaSpecs"]
    assert [r["template"]["spec"]["terminationGracePeriodSeconds"] for r in replicas.values()] == [420, 420]


RUNTIME = {
    "kind": "ClusterTrainingRuntime",
    "metadata": {"name": "torch-distributed"},
    "spec": {
        "template": {
            "spec": {"replicatedJobs": [{"name": "node", "template": {"spec": {"template": {"spec": {}}}}}]}
        }
    },
}


def test_the_preflight_warning_only_where_the_field_is_missing_and_the_period_that_holds_is_shorter():
    line = grace_period_warning(420, RUNTIME, SpecGeneration.V2_2)
    assert "Kubeflow Trainer v2.2 TrainJob API, whose spec.runtimePatches has no" in line
    assert "the pods get 30 s (Kubernetes' default" in line and "Upgrade Kubeflow Trainer to v2.3" in line
    assert "spec.podTemplateOverrides" in grace_period_warning(420, RUNTIME, SpecGeneration.V2_1)
    assert grace_period_warning(420, RUNTIME, SpecGeneration.V2_3) is None
    assert grace_period_warning(None, RUNTIME, SpecGeneration.V2_2) is None  # a workspace step
    assert grace_period_warning(20, RUNTIME, SpecGeneration.V2_2) is None  # 30 s is enough for 20 s


# --- the operator, the validate task, the form and the KFP variable -------------------------------


def _load_dag():
    spec = importlib.util.spec_from_file_location("sft_pipeline_dag_grace", EXAMPLE_DAGS / "sft_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


@pytest.mark.parametrize("bad", BAD)
def test_the_train_task_refuses_it_before_anything_starts(tmp_path, bad):
    from airflow_provider_sft.compat import AirflowFailException
    from airflow_provider_sft.operators.train import SFTTrainOperator
    from tests.unit.operators.test_train import context

    (tmp_path / "d.jsonl").write_text("{}\n")
    op = SFTTrainOperator(
        task_id="t",
        workspace=str(tmp_path / "ws"),
        dataset_path=str(tmp_path / "d.jsonl"),
        resource_gpu_per_worker=0,
        checkpoint_grace_seconds=bad,
    )
    ctx = context()
    with pytest.raises(
        InvalidParameterError, match="checkpoint_grace_seconds: must be a whole number"
    ) as info:
        op.execute(ctx)
    assert isinstance(info.value, AirflowFailException)
    assert not (tmp_path / "ws").exists() and ctx["ti"].pushed == {}


def test_the_train_task_derives_the_default_from_its_local_model(tmp_path):
    from airflow_provider_sft.operators.train import SFTTrainOperator
    from tests.unit.operators.test_train import context

    model = write_model(tmp_path / "model", [[(10, 10)]])
    op = SFTTrainOperator(task_id="t", workspace=str(tmp_path), dataset_path="d", base_model=str(model))
    assert op.build_run(context()).checkpoint_grace_seconds == 90
    op.checkpoint_grace_seconds = "1200"  # as a template renders it
    assert op.build_run(context()).checkpoint_grace_seconds == 1200
    assert "checkpoint_grace_seconds" in SFTTrainOperator.template_fields


def test_the_validate_task_names_it_with_the_other_problems():
    from airflow_provider_sft.operators.validate import ValidateRunOperator

    op = ValidateRunOperator(task_id="v", training={}, checkpoint_grace_seconds="0")
    assert "checkpoint_grace_seconds" in op.problems({}, [])
    assert "checkpoint_grace_seconds" not in ValidateRunOperator(task_id="v", training={}).problems({}, [])


@pytest.mark.parametrize("bad", [value for value in BAD if not isinstance(value, str)])
def test_the_form_refuses_what_the_operator_refuses(bad):
    from airflow.sdk.definitions.param import ParamsDict

    from airflow_provider_sft.compat import ParamValidationError

    form = ParamsDict(_load_dag().params)
    with pytest.raises(ParamValidationError, match="checkpoint_grace_seconds"):
        form["checkpoint_grace_seconds"] = bad
    with pytest.raises(InvalidParameterError, match="checkpoint_grace_seconds"):
        checked_checkpoint_grace_seconds(bad)


@pytest.mark.parametrize("good", [*GOOD, None])
def test_the_form_accepts_what_the_operator_accepts(good):
    from airflow.sdk.definitions.param import ParamsDict

    params = _load_dag().params
    form = ParamsDict(params)
    form["checkpoint_grace_seconds"] = good
    checked_checkpoint_grace_seconds(good)
    schema = params.get_param("checkpoint_grace_seconds").schema
    assert schema["section"] == "Kubernetes" and not {"minimum", "maximum"} & set(schema)  # no clamping


def test_the_dag_hands_the_form_value_to_validate_and_train():
    dag = _load_dag()
    for task_id in ("validate", "train"):
        assert dag.get_task(task_id).checkpoint_grace_seconds == "{{ params.checkpoint_grace_seconds }}"


def test_the_kfp_runner_reads_its_environment_variable(tmp_path, monkeypatch):
    from airflow_provider_sft.kfp.runner import CHECKPOINT_GRACE_ENV, run_train_model

    assert CHECKPOINT_GRACE_ENV == "SFT_CHECKPOINT_GRACE_SECONDS"
    monkeypatch.setenv("SFT_BACKEND", "local")
    monkeypatch.setenv(CHECKPOINT_GRACE_ENV, "0")
    (tmp_path / "pvc" / "dataset").mkdir(parents=True)
    (tmp_path / "pvc" / "dataset" / "train.jsonl").write_text("{}\n")
    with pytest.raises(InvalidParameterError, match="SFT_CHECKPOINT_GRACE_SECONDS: must be a whole number"):
        run_train_model(
            pvc_path=str(tmp_path / "pvc"),
            output_model=None,
            output_metrics=None,
            output_loss_chart=None,
            training_resource_gpu_per_worker=0,
        )
    assert sorted(p.name for p in (tmp_path / "pvc").iterdir()) == ["dataset"]  # nothing written

"""The example DAG's trigger form: every training parameter, typed, titled and sectioned."""

from __future__ import annotations

import importlib.util

import pytest

from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.demo import EXAMPLE_DAGS
from airflow_provider_sft.params_form import pipeline_params


def load_dag():
    spec = importlib.util.spec_from_file_location("sft_pipeline_dag", EXAMPLE_DAGS / "sft_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def test_every_training_parameter_is_in_the_form_with_a_title_and_section():
    params = load_dag().params
    assert set(SFTParams.model_fields) <= set(params.keys())
    for name, param in params.items():
        assert param.schema.get("title") and param.schema.get("section"), name
    assert params.get_param("fsdp_sharding_strategy").schema["enum"] == [
        "FULL_SHARD",
        "SHARD_GRAD_OP",
        "NO_SHARD",
        "HYBRID_SHARD",
    ]
    assert "HF_TOKEN" not in params and "hf_token" not in params  # secrets come from connections


def test_dataset_options_are_in_their_own_section_with_the_cores_choices():
    from airflow.sdk.definitions.param import ParamsDict

    from airflow_provider_sft.compat import ParamValidationError
    from airflow_provider_sft.core.dataset import Format, OnBadRecord, RecordMapping

    params = load_dag().params
    dataset = {name for name, p in params.items() if p.schema.get("section") == "Dataset"}
    assert {
        "dataset",
        "dataset_format",
        "dataset_mapping",
        "on_bad_record",
        "hf_conn_id",
        "aws_conn_id",
    } <= dataset
    assert params.get_param("dataset_mapping").schema["enum"] == [m.value for m in RecordMapping]
    assert params.get_param("dataset_format").schema["enum"] == [f.value for f in Format]
    assert params.get_param("on_bad_record").schema["enum"] == [o.value for o in OnBadRecord]
    form = ParamsDict(params)
    with pytest.raises(ParamValidationError, match="dataset_mapping"):
        form["dataset_mapping"] = "alpaca"


def test_the_form_validates_with_its_own_defaults_and_no_optional_text_is_required():
    """Airflow's form treats "" as a missing required value: optional texts are nullable, default None."""
    from airflow.sdk.definitions.param import ParamsDict

    params = load_dag().params
    ParamsDict(params).validate()  # Trigger with the defaults is possible
    for name in (
        "dataset_split",
        "dataset_subset",
        "dataset_revision",
        "hf_conn_id",
        "aws_conn_id",
        "namespace",
        "pvc_name",
        "job_labels",
        "envs",
        "metadata_labels",
        "metadata_annotations",
    ):
        param = params.get_param(name)
        assert param.value is None and param.schema["type"] == ["null", "string"], name
    assert not [name for name, p in params.items() if p.value == ""]
    for name in ("checkpoint_at_epoch", "use_liger", "accelerate_full_state_at_epoch"):
        assert params.get_param(name).schema["type"] == ["null", "boolean"], name  # a switch: no asterisk


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("resource_memory_per_worker", "64GB"),
        ("resource_memory_per_worker", "64 Gi"),
        ("resource_cpu_per_worker", "abc"),
        ("resource_num_procs_per_worker", "0"),
        ("metadata_labels", "a b=c"),
        ("metadata_labels", "team=" + "x" * 64),
        ("metadata_annotations", "-bad=1"),
        ("job_labels", "kueue.x-k8s.io/queue-name=gpu queue"),
        ("learning_rate", -1),
        ("learning_rate", 0),
        ("effective_batch_size", 10**30),
        ("num_epochs", 0),
        ("lr_scheduler", "cosyne"),
        ("hf_conn_id", " "),
        ("aws_conn_id", "my conn"),
        ("dataset_split", " "),
        ("namespace", "ML_Training"),
        ("pvc_name", "sft workspace"),
        ("runtime_name", ""),
        ("resume", "always"),
        ("validation_split", 1),
        ("validation_split", -0.1),
        ("validation_frequency", 0),
        ("validation_frequency", 2.5),
        ("gpu_hour_cost", -1),
        ("gpu_hour_cost", "cheap"),
    ],
)
def test_the_form_refuses_what_the_operator_refuses(name, bad):
    from airflow.sdk.definitions.param import ParamsDict

    from airflow_provider_sft.compat import ParamValidationError
    from airflow_provider_sft.core.errors import InvalidParameterError

    form = ParamsDict(load_dag().params)
    with pytest.raises(ParamValidationError, match=name):
        form[name] = bad
    if name in SFTParams.model_fields:  # the same value is refused by the operator's model too
        with pytest.raises(InvalidParameterError, match=name):
            SFTParams.parse({name: bad})


@pytest.mark.parametrize(
    ("name", "good"),
    [
        ("resource_memory_per_worker", "512Mi"),
        ("resource_cpu_per_worker", "500m"),
        ("resource_cpu_per_worker", "1.5"),
        ("resource_num_procs_per_worker", "auto"),
        ("envs", "NCCL_DEBUG=INFO, TOKENIZERS_PARALLELISM=false"),
        ("envs", None),
        ("envs", ""),
        ("metadata_labels", "app.kubernetes.io/name=sft,team=ml"),
        ("metadata_annotations", "example.com/owner=ml team"),
        ("job_labels", "kueue.x-k8s.io/queue-name=gpu-queue"),
        ("resume", "never"),
        ("validation_split", 0),
        ("validation_frequency", None),
        ("validation_frequency", 10),
        ("gpu_hour_cost", 2.5),
        ("gpu_hour_cost", 0),
        ("gpu_hour_cost", None),
    ],
)
def test_the_form_accepts_what_the_operator_accepts(name, good):
    from airflow.sdk.definitions.param import ParamsDict

    form = ParamsDict(load_dag().params)
    form[name] = good
    if name in SFTParams.model_fields:
        SFTParams.parse({name: good})


def test_a_validation_split_without_a_frequency_is_refused_by_the_first_task_naming_the_field():
    """The form checks each field alone; the pair is a rule across fields, checked by the validate task."""
    from airflow.sdk.definitions.param import ParamsDict

    from airflow_provider_sft.core.errors import InvalidParameterError

    form = ParamsDict(load_dag().params)
    form["validation_split"] = 0.05
    assert form.get_param("validation_frequency").value is None  # the form lets it through
    with pytest.raises(
        InvalidParameterError, match=r"validation_frequency: is required with validation_split=0\.05"
    ):
        SFTParams.parse({"validation_split": 0.05, "validation_frequency": None})
    form["validation_frequency"] = 10
    params = SFTParams.parse({"validation_split": 0.05, "validation_frequency": 10})
    assert (params.validation_split, params.validation_frequency) == (0.05, 10)


def test_sections_come_in_the_declared_order_with_written_titles():
    from airflow_provider_sft.params_form import SECTIONS, TRAINING_FORM

    params = load_dag().params
    seen = []
    for param in params.values():
        if param.schema["section"] not in seen:
            seen.append(param.schema["section"])
    assert seen == list(SECTIONS)  # each section once, in order: Airflow shows them as they appear
    assert set(TRAINING_FORM) == set(SFTParams.model_fields)
    titles = {name: p.schema["title"] for name, p in params.items()}
    assert (
        titles["envs"] == "Environment variables" and titles["save_samples"] == "Checkpoint every N samples"
    )
    assert "checkpoint" in params.get_param("save_samples").description.lower()
    assert all(p.description for p in params.values())


def test_form_defaults_come_from_the_file_the_demo_writes(tmp_path, monkeypatch):
    import json

    from airflow_provider_sft.params_form import FORM_DEFAULTS_ENV

    defaults = tmp_path / "defaults.json"
    defaults.write_text(json.dumps({"base_model": "/models/tiny", "resource_gpu_per_worker": 0}))
    monkeypatch.setenv(FORM_DEFAULTS_ENV, str(defaults))
    params = load_dag().params
    assert params["base_model"] == "/models/tiny" and params["resource_gpu_per_worker"] == 0
    assert params.get_param("base_model").description  # the field keeps its text


NUMBERS = [
    name for name, param in pipeline_params("/w").items() if param.schema.get("type") in ("integer", "number")
]


def test_the_forms_number_inputs_get_no_bounds_to_clamp_to_yet_bad_numbers_are_refused_by_title():
    """Airflow's number input clamps what is typed to a top-level minimum/maximum (-8 became 1)."""
    from airflow.sdk.definitions.param import ParamsDict

    from airflow_provider_sft.compat import ParamValidationError

    assert {"effective_batch_size", "num_epochs", "learning_rate", "seed"} <= set(NUMBERS)
    for name in NUMBERS:
        schema = pipeline_params("/w")[name].schema
        assert not {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"} & set(schema), name
    form = ParamsDict(load_dag().params)
    for name, bad, title in [
        ("effective_batch_size", -8, "Effective batch size"),
        ("num_epochs", 0, "Epochs"),
        ("learning_rate", 0, "Learning rate"),
        ("seed", 2**32, "Random seed"),
        ("lr_warmup_steps", -1, "Warm-up steps"),
        ("validation_split", 1, "Validation split"),
    ]:
        with pytest.raises(ParamValidationError, match=rf"param {name}: ") as refused:
            form[name] = bad
        assert f"'title': '{title}'" in str(refused.value)


def test_quantity_fields_propose_examples_that_the_form_accepts():
    from airflow.sdk.definitions.param import ParamsDict

    form = ParamsDict(load_dag().params)
    for name in ("resource_memory_per_worker", "resource_cpu_per_worker", "resource_num_procs_per_worker"):
        examples = form.get_param(name).schema["examples"]
        assert examples
        for example in examples:
            form[name] = example


@pytest.mark.parametrize("typed", ["hf_SECRET_VALUE", "MY_TOKEN=hf_SECRET_VALUE\nB=1", "=hf_SECRET_VALUE"])
def test_a_bad_envs_value_is_refused_by_the_first_task_never_echoed_by_airflows_check(typed):
    """Airflow's refusal of a param prints the value it refused; envs may hold a token."""
    from airflow.sdk.definitions.param import ParamsDict

    from airflow_provider_sft.core.errors import InvalidParameterError

    form = ParamsDict(load_dag().params)
    form["envs"] = typed  # no rule of the form's to refuse it with, and so to print it
    with pytest.raises(InvalidParameterError, match="envs") as refused:
        SFTParams.parse({"envs": typed})  # what the validate task checks, first
    assert "SECRET_VALUE" not in str(refused.value)

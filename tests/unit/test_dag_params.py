"""The example DAG's trigger form: every training parameter, typed, titled and sectioned."""

from __future__ import annotations

import importlib.util

import pytest

from airflow_provider_sft.core.params import SFTParams
from tests.conftest import REPO_ROOT


def load_dag():
    spec = importlib.util.spec_from_file_location("sft_pipeline_dag", REPO_ROOT / "dags" / "sft_pipeline.py")
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
    from airflow.sdk.exceptions import ParamValidationError

    from airflow_provider_sft.core.dataset import Format, Mapping, OnBadRecord

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
    assert params.get_param("dataset_mapping").schema["enum"] == [m.value for m in Mapping]
    assert params.get_param("dataset_format").schema["enum"] == [f.value for f in Format]
    assert params.get_param("on_bad_record").schema["enum"] == [o.value for o in OnBadRecord]
    form = ParamsDict(params)
    with pytest.raises(ParamValidationError, match="dataset_mapping"):
        form["dataset_mapping"] = "alpaca"

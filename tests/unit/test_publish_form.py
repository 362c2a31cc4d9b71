"""The example pipeline's ``publish_to`` field, its check, and the second example DAG's schedule."""

from __future__ import annotations

import importlib.util

import pytest
from airflow.sdk import AssetAlias
from airflow.sdk.definitions.param import ParamValidationError

from airflow_provider_sft.assets import MODELS_ALIAS
from airflow_provider_sft.demo import EXAMPLE_DAGS
from airflow_provider_sft.operators.validate import ValidateRunOperator


def load(name):
    spec = importlib.util.spec_from_file_location(f"{name}_dag", EXAMPLE_DAGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def test_publish_to_is_an_empty_field_of_its_own_section_that_refuses_a_path():
    params = load("sft_pipeline").params
    param = params.get_param("publish_to")
    assert (
        param.value is None and param.schema["section"] == "Publish" and param.schema["title"] == "Publish to"
    )
    for good in ("s3://models/team/sft/", "hf://acme/tiny-sft@main"):
        assert param.resolve(good) == good
    with pytest.raises(ParamValidationError):
        param.resolve("/srv/models")  # a local directory is model_dir, not a destination


@pytest.mark.parametrize("bad", ["/srv/models", "s3://", "hf://acme", "gs://bucket/x"])
def test_the_validate_task_names_publish_to_once(bad):
    problems = ValidateRunOperator(task_id="v", training={}, publish_to=bad).problems({}, [])
    assert "publish_to" in problems and bad in problems["publish_to"]
    assert "publish_to" not in ValidateRunOperator(task_id="v", training={}).problems({}, [])
    ok = ValidateRunOperator(task_id="v", training={}, publish_to="s3://models/team/").problems({}, [])
    assert "publish_to" not in ok


def test_the_validate_task_finds_a_missing_publish_connection_before_the_training(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_MODELS_S3", '{"conn_type": "aws", "login": "k", "password": "s"}')
    s3, hub = "s3://models/team/", "hf://acme/model"
    problems = ValidateRunOperator(task_id="v", training={}, publish_to=s3, aws_conn_id="nope").problems(
        {}, []
    )
    assert "no connection 'nope'" in problems["aws_conn_id"]
    problems = ValidateRunOperator(task_id="v", training={}, publish_to=hub, hf_conn_id="nope").problems(
        {}, []
    )
    assert "no connection 'nope'" in problems["hf_conn_id"]
    for fine in (
        ValidateRunOperator(task_id="v", training={}, publish_to=s3, aws_conn_id="models_s3"),
        ValidateRunOperator(task_id="v", training={}, publish_to=s3, aws_conn_id=""),  # boto3's chain
        ValidateRunOperator(task_id="v", training={}, aws_conn_id="nope"),  # nothing published
    ):
        assert not {"aws_conn_id", "hf_conn_id"} & set(fine.problems({}, []))


def test_the_export_task_takes_the_destination_and_the_connections_from_the_form():
    dag = load("sft_pipeline")
    export, validate = dag.get_task("export_model"), dag.get_task("validate")
    assert export.publish_to == validate.publish_to == "{{ params.publish_to }}"
    assert export.aws_conn_id == "{{ params.aws_conn_id }}" and export.hf_conn_id == "{{ params.hf_conn_id }}"
    assert (validate.aws_conn_id, validate.hf_conn_id) == (export.aws_conn_id, export.hf_conn_id)
    assert export.outlets == [AssetAlias(MODELS_ALIAS)]


def test_sft_evaluate_is_scheduled_on_the_models_alias_and_reads_it():
    dag = load("sft_evaluate")
    assert list(dag.timetable.asset_condition.objects) == [
        AssetAlias(MODELS_ALIAS)
    ]  # AssetAll of the one alias
    (task,) = dag.tasks
    assert task.inlets == [AssetAlias(MODELS_ALIAS)] and task.model == "{{ params.model }}"
    assert dag.params.get_param("model").value is None

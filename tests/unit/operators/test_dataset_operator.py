"""ResolveDatasetOperator: options from parameters and connections, validated before reading."""

from __future__ import annotations

import json

import pytest

from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.hooks.aws_connection import s3_options
from airflow_provider_sft.operators.dataset import ResolveDatasetOperator

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYNotReal"


@pytest.mark.parametrize(
    ("extra", "login", "endpoint"),
    [
        (
            {"endpoint_url": "http://minio:9000", "region_name": "eu-west-1"},
            "AKIAEXAMPLE",
            "http://minio:9000",
        ),
        (
            {"service_config": {"s3": {"endpoint_url": "http://ceph:7480"}}, "region_name": "eu-west-1"},
            "AKIAEXAMPLE",
            "http://ceph:7480",
        ),
        (
            {"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": SECRET, "region_name": "eu-west-1"},
            None,
            None,
        ),
    ],
)
def test_s3_options_follow_the_amazon_connection_conventions(monkeypatch, extra, login, endpoint):
    connection = {"conn_type": "aws", "login": login, "password": SECRET if login else None, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_S3", json.dumps(connection))
    options = s3_options("s3")
    assert options.access_key_id.get_secret_value() == "AKIAEXAMPLE"
    assert options.secret_access_key.get_secret_value() == SECRET
    assert (options.endpoint_url, options.region_name) == (endpoint, "eu-west-1")
    assert SECRET not in repr(options) and SECRET not in str(options.model_dump())
    override = s3_options("s3", endpoint_url="http://other:9000", region_name="us-east-2")
    assert (override.endpoint_url, override.region_name) == ("http://other:9000", "us-east-2")


def test_bad_options_fail_naming_every_parameter_before_reading(tmp_path):
    operator = ResolveDatasetOperator(
        task_id="r",
        workspace=str(tmp_path),
        source="s3://never/read",
        mapping="alpaca",
        on_bad_record="ignore",
    )
    with pytest.raises(InvalidParameterError) as info:
        operator.execute({})
    assert set(info.value.errors) == {"mapping", "on_bad_record"}
    assert str(info.value).startswith("Invalid dataset parameters")
    assert not (tmp_path / "dataset").exists()


def test_max_decompressed_bytes_stops_a_source_that_expands_past_it(tmp_path):
    """The cap is the operator's parameter too, not only the core's: a user can lower or lift it."""
    import gzip

    from airflow_provider_sft.core.errors import DatasetError
    from airflow_provider_sft.core.sample_data import bundled_dataset_path

    source = tmp_path / "data.jsonl.gz"
    data = bundled_dataset_path().read_bytes()
    source.write_bytes(gzip.compress(data))
    workspace = tmp_path / "ws"
    capped = ResolveDatasetOperator(
        task_id="r", workspace=str(workspace), source=str(source), max_decompressed_bytes=len(data) // 2
    )
    with pytest.raises(DatasetError, match=rf"data\.jsonl\.gz: .*max_decompressed_bytes={len(data) // 2}"):
        capped.execute({"run_id": "manual__1"})
    assert not list(workspace.rglob("train.jsonl"))
    with pytest.raises(InvalidParameterError, match="max_decompressed_bytes"):
        ResolveDatasetOperator(
            task_id="r", workspace=str(workspace), source=str(source), max_decompressed_bytes=-1
        ).execute({"run_id": "manual__1"})
    lifted = ResolveDatasetOperator(
        task_id="r", workspace=str(workspace), source=str(source), max_decompressed_bytes=0
    )
    assert lifted.execute({"run_id": "manual__1"})["bytes"] > 0


def test_every_option_is_templated():
    assert {
        "source",
        "workspace",
        "format",
        "mapping",
        "on_bad_record",
        "split",
        "subset",
        "revision",
    } <= set(ResolveDatasetOperator.template_fields)


def test_s3_settings_for_a_non_s3_source_are_an_error_not_ignored(tmp_path):
    operator = ResolveDatasetOperator(
        task_id="r", workspace=str(tmp_path), source="bundled", s3_endpoint_url="http://minio:9000"
    )
    with pytest.raises(InvalidParameterError, match="s3_endpoint_url: only for an s3:// source"):
        operator.execute({})
    assert not (tmp_path / "dataset").exists()

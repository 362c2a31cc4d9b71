"""A published model fetched back where the workspace is not mounted: the S3 run prefix from
moto's real S3 server, the Hub commit from the Hub stand-in (``tests/servers.HubStandIn``), each
checked against the manifest that came with it; and the evaluate task on such a model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.dataset.options import RemoteAccess, S3Options
from airflow_provider_sft.core.errors import PublishError
from airflow_provider_sft.core.publish import parse_destination
from airflow_provider_sft.core.publish.fetch import fetch_model
from airflow_provider_sft.core.publish.s3 import publish_s3
from tests.integration.test_publish_hub import TOKEN, export_step, trained_run
from tests.integration.test_publish_s3 import exported_model
from tests.servers import HubStandIn

SECRET = "fetch-secret-key-never-shown"


def sha256s(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in directory.rglob("*")
        if path.is_file() and ".cache" not in path.parts
    }


@pytest.fixture
def published_s3(s3, tiny_model, tmp_path):
    s3.client().create_bucket(Bucket="fetched")
    options = S3Options(
        endpoint_url=s3.url, region_name="us-east-1", access_key_id="reader", secret_access_key=SECRET
    )
    model = exported_model(tmp_path, tiny_model)
    destination = parse_destination("s3://fetched/models/")
    assert destination is not None
    publication = publish_s3(model, destination, run_name="run-1", options=options, log=lambda _: None)
    return model, publication, options


def test_an_s3_model_is_fetched_whole_and_checked_against_its_manifest(published_s3, tmp_path):
    model, publication, options = published_s3
    lines: list[str] = []
    fetched = fetch_model(
        publication.uri, tmp_path / "here", access=RemoteAccess(s3=options), log=lines.append
    )
    assert sha256s(fetched) == sha256s(model)  # every file, the card and the manifest included
    assert lines and "matching sft_manifest.json" in lines[0] and SECRET not in lines[0]


def test_only_the_files_the_manifest_lists_are_fetched(published_s3, s3, tmp_path):
    model, publication, options = published_s3
    leftover = publication.uri.removeprefix("s3://fetched/") + "pytorch_model.bin"  # an earlier attempt's
    s3.client().put_object(Bucket="fetched", Key=leftover, Body=b"not this model")
    fetched = fetch_model(publication.uri, tmp_path / "here", access=RemoteAccess(s3=options), log=print)
    assert not (fetched / "pytorch_model.bin").exists() and sha256s(fetched) == sha256s(model)


def test_an_s3_object_changed_after_the_publish_is_refused_naming_it(published_s3, s3, tmp_path):
    model, publication, options = published_s3
    key = publication.uri.removeprefix("s3://fetched/") + "config.json"
    same_size = (model / "config.json").read_bytes().replace(b"{", b" ", 1)  # one byte changed
    s3.client().put_object(Bucket="fetched", Key=key, Body=same_size)
    with pytest.raises(PublishError) as raised:
        fetch_model(publication.uri, tmp_path / "here", access=RemoteAccess(s3=options), log=lambda _: None)
    assert "config.json do not match sft_manifest.json: refused" in str(raised.value)
    s3.client().put_object(Bucket="fetched", Key=key, Body=b'{"model_type": "other"}')  # another size
    with pytest.raises(PublishError) as raised:
        fetch_model(publication.uri, tmp_path / "again", access=RemoteAccess(s3=options), log=lambda _: None)
    assert "config.json is 23 bytes, the manifest says" in str(raised.value)
    assert "the model fetched from s3://fetched/" in str(raised.value)


def test_an_s3_prefix_with_nothing_under_it_is_not_a_model(published_s3, tmp_path):
    _model, _publication, options = published_s3
    with pytest.raises(PublishError, match="does not exist"):  # its manifest is not there
        fetch_model(
            "s3://fetched/models/runs/none/", tmp_path / "x", access=RemoteAccess(s3=options), log=print
        )


def test_the_evaluate_task_fetches_a_model_published_to_s3_through_the_events_connection(
    published_s3, s3, tiny_model, monkeypatch
):
    from types import SimpleNamespace

    from airflow.sdk import AssetAlias

    from airflow_provider_sft.operators.evaluate import EvaluateModelOperator

    _model, publication, _options = published_s3
    extra = {"endpoint_url": s3.url, "region_name": "us-east-1"}
    monkeypatch.setenv(
        "AIRFLOW_CONN_MODELS_S3",
        json.dumps({"conn_type": "aws", "login": "reader", "password": SECRET, "extra": extra}),
    )
    # The event of a cluster-mode export published to S3: model_path is the pods' path (here a
    # directory this worker happens to have: it must not be loaded), the connection is named.
    event = SimpleNamespace(
        timestamp=1,
        extra={
            "model_uri": publication.uri,
            "model_path": str(tiny_model),
            "exported_uri": "pvc://sft-workspace/runs/run-1/final_model",
            "aws_conn_id": "models_s3",
        },
    )
    task = EvaluateModelOperator(task_id="evaluate")  # no connection of its own: the event's
    result = task.execute({"triggering_asset_events": {AssetAlias("sft_models"): [event]}})
    assert result["model"] == publication.uri and result["perplexity"] > 1.0
    assert result["conversations"] > 0 and SECRET not in json.dumps(result)


@pytest.fixture
def hub(tmp_path, hub_client_online):
    server = HubStandIn(tmp_path / "datasets", TOKEN)
    yield server
    server.stop()


def test_a_hub_commit_is_fetched_whole_with_the_token_and_refused_without(hub, tmp_path):
    run = trained_run(tmp_path / "ws")
    publication = export_step(run, "hf://acme/fetched", hub.url)["publication"]
    access = RemoteAccess(hf_endpoint=hub.url, hf_token=TOKEN)
    fetched = fetch_model(publication["uri"], tmp_path / "here", access=access, log=lambda _: None)
    hub_files = sha256s(fetched)
    hub_files.pop(".gitattributes")  # the Hub's own file of every repo
    assert hub_files == sha256s(run / c.FINAL_MODEL_DIR)
    with pytest.raises(PublishError) as raised:  # the repo is private
        fetch_model(
            publication["uri"], tmp_path / "anon", access=RemoteAccess(hf_endpoint=hub.url), log=print
        )
    assert "HTTP 401" in str(raised.value) and TOKEN not in str(raised.value)

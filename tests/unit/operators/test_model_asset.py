"""The exported model's Airflow Asset: its URI (stable across runs, in Airflow's own form), the
event's extra, the alias outlet, nothing emitted by a failed export, and OpenLineage's output."""

from __future__ import annotations

import json
import math
import warnings
from types import SimpleNamespace

import pytest
from airflow.sdk import Asset, AssetAlias
from airflow.sdk.execution_time.context import OutletEventAccessors

from airflow_provider_sft.assets import MODELS_ALIAS, newest_model_event
from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.publish import parse_destination
from airflow_provider_sft.core.results.model_asset import model_asset_uri, model_event_extra
from airflow_provider_sft.operators.export import ExportModelOperator
from tests.unit.core.results.test_export import write_checkpoint


@pytest.mark.parametrize(
    ("publish_to", "expected"),
    [
        ("s3://models/team/sft/", "s3://models/team/sft"),
        ("s3://models", "s3://models/"),
        ("hf://acme/tiny-sft", "hf://acme/tiny-sft"),
        ("hf://acme/tiny-sft@dev", "hf://acme/tiny-sft@dev"),
        (None, "file:///srv/ws/latest.json"),
    ],
)
def test_the_asset_is_the_destination_as_airflow_stores_it_without_a_warning(publish_to, expected):
    destination = parse_destination(publish_to)
    uri = model_asset_uri(destination.uri if destination else None, latest_path="/srv/ws/latest.json")
    assert uri == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unknown scheme or a password would warn
        asset = Asset(uri)
    assert asset.uri == uri and asset.name == uri  # what a DAG writes in schedule=[Asset(...)]


def test_a_relative_workspace_is_named_by_its_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert model_asset_uri(None, latest_path="ws/latest.json") == f"file://{tmp_path}/ws/latest.json"


def test_a_cluster_workspace_asset_names_the_pvc_not_the_pods_mount_path():
    uri = model_asset_uri(
        None, latest_path="/workspace/latest.json", pvc_name="train-ws", pvc_mount_path="/workspace"
    )
    assert uri == "pvc://train-ws/latest.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Asset(uri).uri == uri


def test_the_extra_names_this_runs_model_and_its_metrics_as_json():
    export = {
        "model_path": "/ws/runs/r1/final_model",
        "metrics_path": "/ws/runs/r1/metrics.json",
        "metrics": {
            "final_loss": 1.25,
            "final_loss_smoothed": 1.5,
            "min_loss": float("nan"),  # JSON has no NaN
            "validation_loss": 1.75,
            "best_validation_loss": 1.7,
            "total_tokens": 4096,
            "steps": 30,
            "epochs": 2,
            "perplexity": 3.5,
        },
        "efficiency": {"gpu_hours": 0.5},
        "publication": {
            "uri": "s3://models/team/sft/runs/r1/",
            "pointer": "s3://models/team/sft/latest.json",
            "files": 7,
            "uploaded_bytes": 123,
            "skipped_files": 0,
        },
    }
    extra = model_event_extra(
        export, asset_uri="s3://models/team/sft", run="r1", dag_id="sft_pipeline", run_id="manual__1"
    )
    assert extra["model_uri"] == "s3://models/team/sft/runs/r1/"  # the published model, per run
    assert extra["asset_uri"] == "s3://models/team/sft" and extra["model_path"] == "/ws/runs/r1/final_model"
    assert (extra["run"], extra["dag_id"], extra["run_id"]) == ("r1", "sft_pipeline", "manual__1")
    assert (extra["final_loss"], extra["final_loss_smoothed"], extra["validation_loss"]) == (1.25, 1.5, 1.75)
    assert (extra["total_tokens"], extra["steps"], extra["gpu_hours"]) == (4096, 30, 0.5)
    assert extra["min_loss"] is None and extra["publication"]["pointer"].endswith("/latest.json")
    assert json.loads(json.dumps(extra, allow_nan=False)) == extra
    local = model_event_extra(export | {"publication": None}, asset_uri="file:///ws/latest.json", run="r1")
    assert local["model_uri"] == "file:///ws/runs/r1/final_model" and local["publication"] is None


def _run_dir(tmp_path, name="manual-20261206-090000-sft-abc"):
    run_dir = tmp_path / c.RUNS_DIR / name
    write_checkpoint(run_dir / c.HF_FORMAT_DIR / "samples_80")
    with (run_dir / c.METRICS_FILE).open("w") as metrics:
        for step in range(1, 11):
            metrics.write(json.dumps({"step": step, "epoch": 0, "avg_loss": 4.0 / step, "lr": 1e-4}) + "\n")
    return run_dir


def _context(outlet_events):
    ti = SimpleNamespace(dag_id="sft_pipeline", task_id="export_model", map_index=-1)
    return {"ti": ti, "run_id": "manual__x", "outlet_events": outlet_events}


def test_a_local_export_emits_the_workspace_asset_through_the_alias(tmp_path, capsys):
    run_dir = _run_dir(tmp_path)
    op = ExportModelOperator(
        task_id="export_model", training_output_dir=str(run_dir), workspace=str(tmp_path)
    )
    assert op.outlets == [AssetAlias(MODELS_ALIAS)]  # declared when parsed: the URI is not known yet
    events = OutletEventAccessors()
    result = op.execute(_context(events))
    (alias_event,) = events[AssetAlias(MODELS_ALIAS)].asset_alias_events
    assert alias_event.dest_asset_key.uri == f"file://{tmp_path}/latest.json"
    extra = alias_event.extra
    assert extra["model_path"] == result["model_path"] == str(run_dir / c.FINAL_MODEL_DIR)
    assert extra["final_loss"] == pytest.approx(0.4) and extra["steps"] == 10
    assert extra["run"] == run_dir.name and extra["run_id"] == "manual__x"
    assert json.loads((tmp_path / c.LATEST_FILE).read_text())["model_path"] == extra["model_path"]
    assert not math.isnan(extra["final_loss_smoothed"])
    said = capsys.readouterr().out
    assert (
        f"Asset event: file://{tmp_path}/latest.json (run {run_dir.name}, through the alias sft_models)"
        in said
    )


def test_a_failed_export_emits_nothing(tmp_path):
    run_dir = tmp_path / c.RUNS_DIR / "manual-20261206-090000-sft-abc"
    run_dir.mkdir(parents=True)  # no metrics, no checkpoint: the step fails
    op = ExportModelOperator(
        task_id="export_model", training_output_dir=str(run_dir), workspace=str(tmp_path)
    )
    events = OutletEventAccessors()
    with pytest.raises(Exception):  # noqa: B017  # whatever the step raises
        op.execute(_context(events))
    assert events[AssetAlias(MODELS_ALIAS)].asset_alias_events == []


def test_a_bad_publish_to_fails_before_the_step_and_emits_nothing(tmp_path):
    run_dir = _run_dir(tmp_path)
    op = ExportModelOperator(
        task_id="export_model", training_output_dir=str(run_dir), workspace=str(tmp_path), publish_to="/tmp/x"
    )
    events = OutletEventAccessors()
    with pytest.raises(Exception, match="publish_to"):
        op.execute(_context(events))
    assert events[AssetAlias(MODELS_ALIAS)].asset_alias_events == []
    assert not (run_dir / c.FINAL_MODEL_DIR).exists()


def test_a_remote_destination_is_the_asset_and_the_publication_the_model(tmp_path, monkeypatch):
    """The URI and extra of an S3 publish, the upload itself replaced (it is core/publish/s3.py's)."""
    publication = {
        "uri": "s3://models/team/sft/runs/r/",
        "pointer": "s3://models/team/sft/latest.json",
        "files": 5,
        "uploaded_bytes": 10,
        "skipped_files": 0,
    }
    run_dir = _run_dir(tmp_path)
    op = ExportModelOperator(
        task_id="export_model",
        training_output_dir=str(run_dir),
        workspace=str(tmp_path),
        publish_to="s3://models/team/sft/",
    )
    monkeypatch.setattr(ExportModelOperator, "publish_options", lambda self: None)
    original = ExportModelOperator.run_step

    def step_without_upload(self, context, step, config, *, secret_env=None):
        result = original(self, context, step, {**config, "publish_to": None}, secret_env=secret_env)
        return result | {"publication": publication}

    monkeypatch.setattr(ExportModelOperator, "run_step", step_without_upload)
    events = OutletEventAccessors()
    op.execute(_context(events))
    (alias_event,) = events[AssetAlias(MODELS_ALIAS)].asset_alias_events
    assert alias_event.dest_asset_key.uri == "s3://models/team/sft"
    assert alias_event.extra["model_uri"] == publication["uri"]
    assert alias_event.extra["publication"] == publication
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("s3://models", "team/sft/runs/r/")]


def test_the_lineage_output_is_the_local_model_without_a_destination(tmp_path):
    run_dir = _run_dir(tmp_path)
    op = ExportModelOperator(
        task_id="export_model", training_output_dir=str(run_dir), workspace=str(tmp_path)
    )
    op.execute(_context(OutletEventAccessors()))
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("file", str(run_dir / c.FINAL_MODEL_DIR))]


def test_no_alias_no_outlet():
    op = ExportModelOperator(task_id="e", training_output_dir="/x", workspace="/ws", asset_alias=None)
    assert op.outlets == []


def _event(extra, second):
    from datetime import datetime, timezone

    return SimpleNamespace(extra=extra, timestamp=datetime(2026, 12, 6, 9, 0, second, tzinfo=timezone.utc))


def test_the_newest_triggering_event_names_the_model():
    """On the Task SDK's own accessor (keyed as Airflow keys it: an AssetAlias is not hashable on 3.1)."""
    from airflow.sdk.definitions.asset import AssetAliasUniqueKey
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    key = AssetAliasUniqueKey.from_asset_alias(AssetAlias(MODELS_ALIAS))
    triggering = TriggeringAssetEventsAccessor(
        {key: [_event({"model_path": "/a"}, 1), _event({"model_path": "/b"}, 2)]}
    )
    assert newest_model_event({"triggering_asset_events": triggering}) == {"model_path": "/b"}


class _InletEvents:
    """The part of the Task SDK's InletEventsAccessors the lookup uses: events by alias, else KeyError."""

    def __init__(self, events):
        self.events = events

    def __getitem__(self, key):
        if isinstance(key, AssetAlias) and key.name == MODELS_ALIAS and self.events:
            return self.events
        raise KeyError(key)


def test_a_manual_run_takes_the_aliases_newest_inlet_event():
    inlets = _InletEvents([_event({"model_path": "/old"}, 1), _event({"model_path": "/new"}, 5)])
    context = {"triggering_asset_events": {}, "inlet_events": inlets}
    assert newest_model_event(context) == {"model_path": "/new"}
    assert newest_model_event({"triggering_asset_events": {}, "inlet_events": _InletEvents([])}) is None


def test_a_hub_publication_is_a_hub_model_dataset_in_lineage():
    from airflow_provider_sft.lineage import operator_lineage

    lineage = operator_lineage(
        [("/ws/runs/r/hf_format/samples_8", "models")], [("hf://acme/tiny@0a1b2c", "models")]
    )
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("hf://models", "acme/tiny@0a1b2c")]


def test_in_cluster_mode_the_operator_names_the_pvc(tmp_path):
    op = ExportModelOperator(
        task_id="export_model",
        training_output_dir="/workspace/runs/r",
        workspace=str(tmp_path),
        backend="kubernetes",
        kubernetes={"pvc_name": "train-ws"},
    )
    events = OutletEventAccessors()
    result = {"model_path": "/workspace/runs/r/final_model", "metrics": {"final_loss": 1.0}}
    op.emit_asset_event(_context(events), None, f"{op.step_workspace}/{c.LATEST_FILE}", "r", result)
    (alias_event,) = events[AssetAlias(MODELS_ALIAS)].asset_alias_events
    assert alias_event.dest_asset_key.uri == "pvc://train-ws/latest.json"
    assert alias_event.extra["model_path"] == "/workspace/runs/r/final_model"  # as the pods see it
    assert alias_event.extra["model_uri"] == "pvc://train-ws/runs/r/final_model"

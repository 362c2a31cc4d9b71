"""The provider's ``huggingface`` connection type: registration, form fields and the hook."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from airflow_provider_sft.hooks.huggingface import HuggingFaceHook
from airflow_provider_sft.operators.train import SFTTrainOperator

TOKEN = "hf_NotARealTokenButLongEnough"


@pytest.fixture
def hf_connection(monkeypatch):
    connection = {
        "conn_type": "huggingface",
        "host": "hub.example.internal",
        "password": TOKEN,
        "extra": {"revision": "v1.2"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_HF_TEST", json.dumps(connection))
    return "hf_test"


def test_providers_manager_registers_the_connection_form():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    hook = ProvidersManagerTaskRuntime().hooks["huggingface"]
    assert hook.hook_class_name == "airflow_provider_sft.hooks.huggingface.HuggingFaceHook"
    assert hook.package_name == "airflow-provider-sft"
    behaviour = manager.field_behaviours["huggingface"]
    assert behaviour["relabeling"] == {"host": "Hub endpoint", "password": "Access token"}
    assert set(behaviour["hidden_fields"]) == {"schema", "port", "login", "extra"}
    widget = manager.connection_form_widgets["extra__huggingface__revision"]
    assert widget.field["schema"]["title"] == "Default revision"
    assert not widget.is_sensitive


def test_hook_reads_token_endpoint_and_revision(hf_connection):
    hook = HuggingFaceHook(hf_connection)
    assert hook.get_token() == TOKEN
    assert hook.get_endpoint() == "https://hub.example.internal"
    assert hook.get_revision() == "v1.2"
    assert TOKEN not in repr(hook.get_conn().__dict__.get("endpoint"))


def test_hook_without_connection_falls_back_to_the_environment(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    hook = HuggingFaceHook(None)
    assert (hook.get_token(), hook.get_endpoint(), hook.get_revision()) == (TOKEN, "http://127.0.0.1:9", None)


def test_train_operator_takes_the_token_from_the_connection(hf_connection, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    operator = SFTTrainOperator(task_id="t", dataset_path="d", workspace="w", hf_conn_id=hf_connection)
    credentials = operator._credentials()
    assert credentials.hf_token == TOKEN
    assert TOKEN not in repr(credentials)


@pytest.mark.slow
def test_airflow_cli_lists_the_provider_and_its_connection_type(tmp_path):
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}

    def cli(*args):
        out = subprocess.run(
            [sys.executable, "-m", "airflow", *args, "-o", "json"], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout[out.stdout.index("[") :])

    providers = {p["package_name"]: p for p in cli("providers", "list")}
    assert "airflow-provider-sft" in providers
    hooks = {h["connection_type"]: h for h in cli("providers", "hooks")}
    assert hooks["huggingface"]["class"] == "airflow_provider_sft.hooks.huggingface.HuggingFaceHook"
    assert hooks["huggingface"]["package_name"] == "airflow-provider-sft"
    assert hooks["huggingface"]["conn_id_attribute_name"] == "hf_conn_id"


def test_a_blank_token_is_no_token(monkeypatch):
    from airflow_provider_sft.hooks.huggingface import HuggingFaceHook

    monkeypatch.setenv("HF_TOKEN", "  \n")
    assert HuggingFaceHook(None).get_token() is None

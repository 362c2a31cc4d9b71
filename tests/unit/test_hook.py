"""SFTTrainingHook: the seed's KUBERNETES_SERVER_URL/KUBERNETES_AUTH_TOKEN path."""

from __future__ import annotations

import pytest

from airflow_provider_sft.hooks.sft import SFTTrainingHook

TOKEN = "sha256~NotARealClusterToken"


def test_env_server_needs_a_ca_and_never_shows_the_token(monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVER_URL", "https://api.cluster.example:6443")
    monkeypatch.setenv("KUBERNETES_AUTH_TOKEN", TOKEN)
    monkeypatch.delenv("KUBERNETES_CA_CERT", raising=False)
    with pytest.raises(ValueError, match="KUBERNETES_CA_CERT") as info:
        SFTTrainingHook().api_client  # noqa: B018
    assert TOKEN not in str(info.value)


def test_env_server_builds_a_bearer_client(monkeypatch, tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("KUBERNETES_SERVER_URL", "https://api.cluster.example:6443")
    monkeypatch.setenv("KUBERNETES_AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("KUBERNETES_CA_CERT", str(ca))
    config = SFTTrainingHook().api_client.configuration
    assert config.host == "https://api.cluster.example:6443"
    assert config.ssl_ca_cert == str(ca)
    assert config.api_key == {"authorization": f"Bearer {TOKEN}"}
    assert SFTTrainingHook().get_namespace() is None

"""SFTTrainingHook: the seed's KUBERNETES_SERVER_URL/KUBERNETES_AUTH_TOKEN path."""

from __future__ import annotations

import asyncio

import pytest

from airflow_provider_sft.core.backends.kubernetes.client import environment_configuration
from airflow_provider_sft.hooks.sft import SFTTrainingHook

TOKEN = "sha256~NotARealClusterToken"


def test_env_server_needs_a_ca_and_never_shows_the_token(monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVER_URL", "https://api.cluster.example:6443")
    monkeypatch.setenv("KUBERNETES_AUTH_TOKEN", TOKEN)
    monkeypatch.delenv("KUBERNETES_CA_CERT", raising=False)
    with pytest.raises(ValueError, match="KUBERNETES_CA_CERT") as info:
        environment_configuration()
    assert TOKEN not in str(info.value)


def test_env_server_builds_a_bearer_client(monkeypatch):
    import certifi

    ca = certifi.where()  # any real CA bundle: the client loads it
    monkeypatch.setenv("KUBERNETES_SERVER_URL", "https://api.cluster.example:6443")
    monkeypatch.setenv("KUBERNETES_AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("KUBERNETES_CA_CERT", str(ca))

    async def configuration():
        async with SFTTrainingHook().connect() as kube:
            return kube.api_client.configuration

    config = asyncio.run(configuration())
    assert config.host == "https://api.cluster.example:6443"
    assert config.ssl_ca_cert == str(ca)
    assert config.api_key == {"authorization": f"Bearer {TOKEN}"}
    assert SFTTrainingHook().get_namespace() is None

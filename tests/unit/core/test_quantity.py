"""core.quantity against kubernetes.utils.parse_quantity, the reference, on what the API server accepts."""

from __future__ import annotations

import pytest
from kubernetes.utils import parse_quantity as reference

from airflow_provider_sft.core.quantity import parse_quantity

VALID = [
    "500m",
    "4",
    "64Gi",
    "1e3",
    "1E3",
    "1.5",
    "0.5Gi",
    "100k",
    "2M",
    ".5",
    "5.",
    "+1",
    "1Ki",
    "3n",
    "12u",
    "1e-3",
    "7Ei",
    "2P",
]


@pytest.mark.parametrize("text", VALID)
def test_same_value_as_the_kubernetes_client(text):
    assert parse_quantity(text) == reference(text)


@pytest.mark.parametrize("text", ["", "abc", "Gi", "1.2.3", "0x10", "1ki", "e3", "1 Gi", "1e3k"])
def test_what_the_api_server_refuses_is_refused(text):
    with pytest.raises(ValueError):
        parse_quantity(text)

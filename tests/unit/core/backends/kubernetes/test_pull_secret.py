"""OCI_PULL_SECRET_MODEL_DOWNLOAD is refused before any work when the job's Secret could not use it."""

from __future__ import annotations

import pytest

from airflow_provider_sft.core.backends.kubernetes.pull_secret import oci_pull_secret
from airflow_provider_sft.core.errors import InvalidParameterError

VARIABLE = "OCI_PULL_SECRET_MODEL_DOWNLOAD"
GOOD = '{"auths": {"quay.io": {"auth": "dXNlcjpzM2NyZXQ="}}}'


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("not-json-s3cret", "is not JSON (line 1, column 1)"),
        ('{"auths": {"quay.io": {"auth": "s3cret"}', "is not JSON (line 1, column"),
        ("{}", 'has no "auths" object naming at least one registry'),
        ('{"auths": {}}', 'has no "auths" object naming at least one registry'),
        ('["s3cret"]', "is a JSON list, not an object"),
        ('{"auths": {"quay.io": "s3cret"}}', '"auths" entries must be objects (not so for: quay.io)'),
    ],
    ids=["not-json", "truncated", "empty-object", "no-registry", "a-list", "entry-not-an-object"],
)
def test_an_unusable_pull_secret_is_refused_naming_the_variable_never_its_value(value, reason):
    with pytest.raises(InvalidParameterError) as info:
        oci_pull_secret({VARIABLE: value})
    assert list(info.value.errors) == [VARIABLE]
    assert info.value.errors[VARIABLE].startswith(reason)
    assert "s3cret" not in str(info.value)


def test_a_docker_config_or_nothing_passes():
    assert oci_pull_secret({VARIABLE: GOOD}) == GOOD
    assert oci_pull_secret({}) is None and oci_pull_secret({VARIABLE: ""}) is None

"""The OCI registry pull secret (``OCI_PULL_SECRET_MODEL_DOWNLOAD``), checked before any work.

It becomes the ``.dockerconfigjson`` of the job's ``kubernetes.io/dockerconfigjson`` Secret. The
API server refuses that Secret (422) unless the value is a JSON object, and the kubelet finds no
credentials in one without ``auths``: either would surface only after the dataset was resolved
and objects were created. Checked here instead, naming the variable and never echoing its value.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.errors import InvalidParameterError

EXPECTED = 'a docker config JSON object: {"auths": {"<registry>": {"auth": "<base64 of user:password>"}}}'


def oci_pull_secret(environ: Mapping[str, str] = os.environ) -> str | None:
    """The pull secret from the environment, or None when it is not set; raises when it is unusable."""
    value = environ.get(c.OCI_PULL_SECRET_ENV) or None
    if value is not None:
        problem = docker_config_problem(value)
        if problem:
            raise InvalidParameterError({c.OCI_PULL_SECRET_ENV: f"{problem}; expected {EXPECTED}"})
    return value


def docker_config_problem(value: str) -> str | None:
    """Why ``value`` is not a usable docker config JSON, without quoting any of it; None when it is."""
    try:
        config = json.loads(value)
    except json.JSONDecodeError as error:  # the position, never the text
        return f"is not JSON (line {error.lineno}, column {error.colno})"
    if not isinstance(config, dict):
        return f"is a JSON {type(config).__name__}, not an object"
    auths = config.get("auths")
    if not isinstance(auths, dict) or not auths:
        return 'has no "auths" object naming at least one registry'
    not_objects = sorted(registry for registry, entry in auths.items() if not isinstance(entry, dict))
    if not_objects:
        return f'"auths" entries must be objects (not so for: {", ".join(not_objects)})'
    return None

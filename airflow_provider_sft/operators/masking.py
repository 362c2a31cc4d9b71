"""Secret-looking ``envs`` values masked the way Airflow masks connection passwords."""

from __future__ import annotations

from typing import Any

from airflow_provider_sft.core.secret_env import secret_values


def mask_secret_envs(envs: Any) -> None:
    """Register each secret-looking value with Airflow's secrets masker.

    Called right after rendering: Airflow redacts Rendered Templates and every log line with
    the masker, so ``MY_API_TOKEN=abc`` shows as ``MY_API_TOKEN=***`` in both. The DAG run's
    ``conf`` keeps what was typed: secrets belong in connections (``hf_conn_id``) or Secrets.
    """
    values = secret_values(envs)
    if not values:
        return
    from airflow.sdk.log import mask_secret

    for value in values:
        mask_secret(value)

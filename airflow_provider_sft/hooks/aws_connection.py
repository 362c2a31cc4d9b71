"""S3 settings from an Airflow ``aws`` connection, without needing the Amazon provider installed.

It reads the Amazon provider's conventions: login/password (or extra ``aws_access_key_id`` /
``aws_secret_access_key``) as the key pair, extra ``aws_session_token``, ``region_name`` and
``endpoint_url`` (or ``service_config.s3.endpoint_url``) for S3-compatible stores. Without a
connection, boto3's own chain applies (environment, profile, instance role).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk.bases.hook import BaseHook

from airflow_provider_sft.core.dataset import S3Options


def s3_options(
    aws_conn_id: str | None, *, endpoint_url: str | None = None, region_name: str | None = None
) -> S3Options:
    """Explicit ``endpoint_url``/``region_name`` win over the connection's."""
    values: dict[str, Any] = {}
    if aws_conn_id:
        connection = BaseHook.get_connection(aws_conn_id)
        extra = connection.extra_dejson
        s3_config = (extra.get("service_config") or {}).get("s3") or {}
        values = {
            "access_key_id": connection.login or extra.get("aws_access_key_id"),
            "secret_access_key": connection.password or extra.get("aws_secret_access_key"),
            "session_token": extra.get("aws_session_token"),
            "region_name": extra.get("region_name"),
            "endpoint_url": s3_config.get("endpoint_url")
            or extra.get("endpoint_url")
            or connection.host
            or None,
        }
    values |= {k: v for k, v in {"endpoint_url": endpoint_url, "region_name": region_name}.items() if v}
    return S3Options(**{k: v for k, v in values.items() if v})

"""Who to be at S3 and the Hub, from an Airflow task's ``aws`` and ``huggingface`` connections."""

from __future__ import annotations

from typing import Any, TypeVar

from airflow_provider_sft.core.dataset.options import RemoteAccess
from airflow_provider_sft.hooks.aws_connection import s3_options
from airflow_provider_sft.hooks.huggingface import HuggingFaceHook

Access = TypeVar("Access", bound=RemoteAccess)


def remote_access(
    aws_conn_id: str | None, hf_conn_id: str | None, *, model: type[Access], **values: Any
) -> Access:
    """``model`` (a :class:`RemoteAccess`: the publish options, or the access to fetch a model)
    built from the two connections, empty ids meaning none, plus ``values``. The secrets stay in
    ``SecretStr`` fields: never logged or returned."""
    hub = HuggingFaceHook(hf_conn_id or None)
    return model.build(
        s3=s3_options(aws_conn_id or None), hf_token=hub.get_token(), hf_endpoint=hub.get_endpoint(), **values
    )

"""``HuggingFaceHook``: the provider's ``huggingface`` connection type (Hub token and endpoint).

Its form (labels, hidden fields, extra fields) is declared in ``get_provider_info``,
so the UI renders it without importing this module.

The token is the connection's password, so Airflow masks it in the UI, in logs and
in the REST API like any other password; the host is the Hub endpoint for mirrors
or a private Hub (empty = the public Hub). Operators take ``hf_conn_id`` and never
put the token in Params, XComs or TrainJob specs.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

from airflow.sdk.bases.hook import BaseHook

from airflow_provider_sft.core import constants as c


class HuggingFaceHook(BaseHook):
    """Token and endpoint of a Hugging Face Hub connection.

    :param hf_conn_id: a ``huggingface`` connection (any connection whose password is the token works).
        Without one, the environment's ``HF_TOKEN`` / ``HF_ENDPOINT`` apply, as in the KFP component.
    """

    conn_name_attr = "hf_conn_id"
    default_conn_name = "huggingface_default"
    conn_type = "huggingface"
    hook_name = "Hugging Face Hub"

    def __init__(self, hf_conn_id: str | None = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hf_conn_id = hf_conn_id

    @cached_property
    def _connection(self) -> Any | None:
        """Looked up once per hook: a lookup may reach a secrets backend, and every getter needs it."""
        return self.get_connection(self.hf_conn_id) if self.hf_conn_id else None

    def get_token(self) -> str | None:
        connection = self._connection
        token = connection.password if connection else os.environ.get(c.HF_TOKEN_ENV)
        return (token or "").strip() or None  # a blank token is no token, not a credential to send

    def get_endpoint(self) -> str | None:
        connection = self._connection
        host = (connection.host if connection else None) or os.environ.get("HF_ENDPOINT")
        if host and "://" not in host:
            host = f"https://{host}"
        return host.rstrip("/") if host else None

    def get_revision(self) -> str | None:
        connection = self._connection
        return (connection.extra_dejson.get("revision") if connection else None) or None

    def get_conn(self) -> Any:
        """A ``huggingface_hub.HfApi`` on this connection's endpoint and token."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.get_endpoint(), token=self.get_token() or False)

    def test_connection(self) -> tuple[bool, str]:
        """The UI's "Test" button: ask the Hub who the token belongs to (the token is not echoed)."""
        try:
            who = self.get_conn().whoami()
        except Exception as error:  # the Hub's own message, which never contains the token
            return False, f"{type(error).__name__}: {error}"
        return True, f"Authenticated as {who.get('name', 'unknown')}"

"""Publish an exported model to a Hugging Face Hub repo: see :func:`publish_hub`."""

from __future__ import annotations

from pathlib import Path

from airflow_provider_sft.core.publish import Destination, Logger, Publication


def publish_hub(
    model_path: Path,
    destination: Destination,
    *,
    run_name: str,
    token: str | None,
    endpoint: str | None,
    private: bool,
    log: Logger,
) -> Publication:
    """One commit of the whole model (card included) to ``destination.repo_id``."""
    raise NotImplementedError("#24: Hub publishing is being built")

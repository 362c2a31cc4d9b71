"""Publish an exported model to ``s3://bucket/prefix/`` (AWS, MinIO, Ceph): see :func:`publish_s3`."""

from __future__ import annotations

from pathlib import Path

from airflow_provider_sft.core.dataset.options import S3Options
from airflow_provider_sft.core.publish import Destination, Logger, Publication


def publish_s3(
    model_path: Path, destination: Destination, *, run_name: str, options: S3Options, log: Logger
) -> Publication:
    """Every file of the model under ``<prefix>/runs/<run_name>/``, then ``<prefix>/latest.json``."""
    raise NotImplementedError("#24: S3 publishing is being built")

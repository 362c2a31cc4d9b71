"""OpenLineage datasets for the pipeline's tasks: source -> dataset file -> run -> model.

Only used when Airflow's OpenLineage provider is installed (the ``lineage`` extra) and
configured; without it every function here returns ``None`` and nothing is imported.
Dataset names follow the OpenLineage naming spec: ``file`` + absolute path for local
and PVC paths, ``s3://<bucket>`` + key, ``<scheme>://<host>`` + path for URLs, and
``hf://datasets`` (or ``hf://models``) + repo id for the Hugging Face Hub.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

#: Whether the OpenLineage provider is importable (checked without importing it).
AVAILABLE = importlib.util.find_spec("airflow.providers.openlineage") is not None


def naming(location: str, *, hub_kind: str = "datasets") -> tuple[str, str]:
    """``(namespace, name)`` of a path, URL or Hugging Face repo id."""
    if location.startswith("hf://"):
        return f"hf://{hub_kind}", location.removeprefix("hf://").lstrip("/")
    parts = urlsplit(location)
    if parts.scheme in ("s3", "gs", "abfs", "http", "https"):
        return f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/") or "/"
    if parts.scheme == "file":
        return "file", parts.path
    if location.startswith("/"):
        return "file", str(PurePosixPath(location))
    return f"hf://{hub_kind}", location  # a bare "org/name" is a Hub repo id


def operator_lineage(inputs: Iterable[tuple[str, str]], outputs: Iterable[tuple[str, str]]) -> Any | None:
    """An ``OperatorLineage`` from ``(location, hub_kind)`` pairs, or ``None`` without the provider."""
    if not AVAILABLE:
        return None
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from airflow.providers.openlineage.extractors import OperatorLineage

    def datasets(items: Iterable[tuple[str, str]]) -> list[Any]:
        return [Dataset(*naming(location, hub_kind=kind)) for location, kind in items if location]

    return OperatorLineage(inputs=datasets(inputs), outputs=datasets(outputs))


class LineageMixin:
    """Operators record what they read and wrote; the OpenLineage listener asks on completion."""

    _lineage_io: tuple[list[tuple[str, str]], list[tuple[str, str]]] | None = None

    def record_lineage(self, inputs: Iterable[tuple[str, str]], outputs: Iterable[tuple[str, str]]) -> None:
        self._lineage_io = (list(inputs), list(outputs))

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any | None:
        return operator_lineage(*self._lineage_io) if self._lineage_io else None

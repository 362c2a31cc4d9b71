"""What an exported model is, as a data asset: a URI stable across runs, and the event's ``extra``.

A DAG that schedules on an asset names its URI when it is parsed, long before any run; the
export's destination is only known at run time (``publish_to`` and ``workspace`` are templated).
So the asset is the *destination*, the place every run of a pipeline publishes to, and the model
of one run is in the event's ``extra``:

- ``s3://bucket/prefix/`` -> ``s3://bucket/prefix`` (each run under ``prefix/runs/<run>/``);
- ``hf://org/name[@revision]`` -> itself (each run one commit; the commit is the model);
- no ``publish_to``: the workspace's pointer, ``file://<workspace>/latest.json``, the one file
  every local export replaces (the model directories themselves differ per run). In ``cluster``
  workspace mode that file is on the PVC, not on the worker: ``pvc://<pvc>/latest.json``.

The URIs are written in the form Airflow stores (``airflow.sdk.Asset`` drops a trailing ``/`` of
the path): the URI a user types into ``schedule=[Asset(...)]`` is then the one emitted. No
Airflow import here; the Airflow layer wraps these in ``Asset`` objects.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

#: The ``extra`` keys of a model's asset event taken from the run's metrics summary.
METRIC_KEYS = (
    "final_loss",
    "final_loss_smoothed",
    "min_loss",
    "validation_loss",
    "best_validation_loss",
    "total_tokens",
    "steps",
    "epochs",
)


def stored_uri(uri: str) -> str:
    """``uri`` as Airflow stores an asset's URI: scheme lower-case, no trailing ``/``, no fragment."""
    parts = urlsplit(uri)
    return urlunsplit(
        parts._replace(scheme=parts.scheme.lower(), path=parts.path.rstrip("/") or "/", fragment="")
    )


def workspace_uri(path: str, *, pvc_name: str | None = None, pvc_mount_path: str | None = None) -> str:
    """The URI of a workspace ``path``: ``file://`` + it made absolute (a relative workspace is
    relative to this process's directory, as the export step saw it), or ``pvc://<pvc>/`` + the
    path inside the PVC when the workspace is that PVC, mounted at ``pvc_mount_path`` (cluster mode)."""
    if pvc_name:
        inside = PurePosixPath(path).relative_to(pvc_mount_path or "/")
        return stored_uri(f"pvc://{pvc_name}/{inside}")
    return stored_uri(f"file://{PurePosixPath(os.path.abspath(path))}")


def model_asset_uri(
    destination_uri: str | None,
    *,
    latest_path: str,
    pvc_name: str | None = None,
    pvc_mount_path: str | None = None,
) -> str:
    """The asset's URI for models published to ``destination_uri`` (a parsed ``publish_to``), or,
    without one, the workspace's ``latest.json`` at ``latest_path`` (a path on the PVC mounted at
    ``pvc_mount_path`` when ``pvc_name`` is given)."""
    if destination_uri:
        return stored_uri(destination_uri)
    return workspace_uri(latest_path, pvc_name=pvc_name, pvc_mount_path=pvc_mount_path)


def _finite(value: Any) -> Any:
    """JSON has no NaN: a non-finite loss is reported as None (``non_finite_losses`` counts them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def model_event_extra(
    export: Mapping[str, Any],
    *,
    asset_uri: str,
    run: str,
    dag_id: str | None = None,
    run_id: str | None = None,
    pvc_name: str | None = None,
    pvc_mount_path: str | None = None,
    connections: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """The asset event's ``extra`` for the export step's result ``export`` of the training run
    ``run`` (its directory's name), exported by the Airflow run ``dag_id``/``run_id``.
    ``connections``: the names (never the secrets) of the connections it published through
    (``aws_conn_id``, ``hf_conn_id``), so a consumer can fetch the model as the producer sent it.

    ``model_uri`` is this run's model: the published one (``publication.uri``) when there is one,
    else the exported directory's :func:`workspace_uri`; ``model_path`` is where the workspace
    holds it (as the step saw it: the pods' mount path in cluster mode).
    The metrics are numbers only (no training data, no secrets: the publication names URIs and
    counts).
    """
    metrics = export.get("metrics") or {}
    publication = export.get("publication")
    model_path = str(export["model_path"])
    exported = workspace_uri(model_path, pvc_name=pvc_name, pvc_mount_path=pvc_mount_path)
    model_uri = publication["uri"] if publication else exported
    extra: dict[str, Any] = {
        "asset_uri": asset_uri,
        "model_uri": model_uri,
        "model_path": model_path,
        "exported_uri": exported,  # file:// (a worker may see model_path) or pvc:// (the pods' path)
        "run": run,
        "dag_id": dag_id,
        "run_id": run_id,
        "metrics_path": export.get("metrics_path"),
    }
    extra.update({key: _finite(metrics.get(key)) for key in METRIC_KEYS})
    efficiency = export.get("efficiency") or {}
    extra["gpu_hours"] = _finite(efficiency.get("gpu_hours"))
    extra["publication"] = dict(publication) if publication else None
    extra.update({name: value or None for name, value in (connections or {}).items()})
    return extra

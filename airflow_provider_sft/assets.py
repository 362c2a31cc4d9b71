"""The Airflow Asset of a published model, and how a downstream DAG finds the model it names.

The export task declares an ``AssetAlias`` as its outlet (the alias's name is fixed when the DAG
is parsed) and, once the model is exported and published, attaches to it the asset of the
destination, whose URI is only known at run time (see
:mod:`airflow_provider_sft.core.results.model_asset`). Airflow then records the asset, links it
to the alias and queues every unpaused DAG scheduled on the alias (``schedule=[model_alias()]``)
or on the concrete asset (``schedule=[Asset("s3://bucket/prefix")]``). A failed export emits
nothing: Airflow registers outlet events only when the task succeeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import Asset, AssetAlias

#: The alias every ``ExportModelOperator`` emits its model's asset through by default.
MODELS_ALIAS = "sft_models"


def model_alias(name: str = MODELS_ALIAS) -> AssetAlias:
    """The alias a DAG schedules on to run after every exported model (of any destination)."""
    return AssetAlias(name)


def emit_model_event(context: Mapping[str, Any], alias: str, uri: str, extra: dict[str, Any]) -> bool:
    """Attach the asset ``uri`` to the task's outlet alias ``alias`` with the event's ``extra``;
    False where there is no task run to emit it for (``execute`` called outside Airflow)."""
    outlet_events = context.get("outlet_events")
    if outlet_events is None:
        return False
    outlet_events[AssetAlias(alias)].add(Asset(uri), extra=extra)
    return True


def newest_model_event(context: Mapping[str, Any], alias: str = MODELS_ALIAS) -> dict[str, Any] | None:
    """The ``extra`` of the newest model event this run is about: one of the events that
    triggered it (an asset-triggered run), else the alias's newest event (``inlet_events``, for a
    manual run of a task with the alias as an inlet); None when there is none."""
    triggering = context.get("triggering_asset_events") or {}
    # By name, not ``triggering[AssetAlias(alias)]``: Airflow 3.1's AssetAlias is not hashable.
    of_alias = [
        group for key, group in triggering.items() if isinstance(key, AssetAlias) and key.name == alias
    ]
    events: Sequence[Any] = (
        of_alias[0] if of_alias else [event for group in triggering.values() for event in group]
    )
    if not events:
        inlet_events = context.get("inlet_events")
        if inlet_events is not None:
            try:
                events = list(inlet_events[AssetAlias(alias)])
            except (KeyError, LookupError):
                events = ()
    if not events:
        return None
    newest = max(events, key=lambda event: event.timestamp)
    return dict(newest.extra or {})

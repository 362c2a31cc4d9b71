"""Airflow names that moved between the supported minors (3.1 to 3.3), imported from one place.

The exceptions moved from ``airflow.exceptions`` to ``airflow.sdk.exceptions`` in 3.2/3.3; a task
raises and catches whichever class its Task SDK uses, so each name is taken from the SDK first.
``apache-airflow-providers-common-compat`` resolves most of them; the three it does not carry
(the deferral's and a kill's) are resolved the same way here.
"""

from __future__ import annotations

from airflow.providers.common.compat.sdk import (
    AirflowFailException,
    AirflowNotFoundException,
    ParamValidationError,
    TaskDeferred,
)

try:
    from airflow.sdk.exceptions import AirflowTaskTerminated, TaskDeferralError, TaskDeferralTimeout
except ImportError:  # Airflow 3.1
    from airflow.exceptions import (  # type: ignore[no-redef]
        AirflowTaskTerminated,
        TaskDeferralError,
        TaskDeferralTimeout,
    )

__all__ = [
    "AirflowFailException",
    "AirflowNotFoundException",
    "AirflowTaskTerminated",
    "ParamValidationError",
    "TaskDeferralError",
    "TaskDeferralTimeout",
    "TaskDeferred",
]

"""The training program's lines in the Airflow task log, at their level, under their own logger.

The backends pass on only the provider's own lines (:mod:`airflow_provider_sft.core.pod.protocol`);
a dedicated logger lets the UI's source filter separate them from Airflow's and the operator's.
"""

from __future__ import annotations

import logging

from airflow_provider_sft.core.pod.protocol import classify_log_line

#: The training's lines in the task log: the backends pass the provider's own (see core.pod.protocol).
TRAINING_LOG = logging.getLogger("airflow_provider_sft.training")


def log_training_line(line: str) -> None:
    """A backend's log line in the task log at its level: ``ERROR:`` lines as errors, warnings as
    warnings, the rest (the backend's own lines too) as info."""
    shown = classify_log_line(line)
    TRAINING_LOG.log(shown.level if shown else logging.INFO, line)

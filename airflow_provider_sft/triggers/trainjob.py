"""The trigger's earlier import path: triggers serialized before the rename name this module.

Airflow stores a deferred task's trigger as its class path and kwargs, and the triggerer imports
that path again (after an upgrade too): ``airflow_provider_sft.triggers.trainjob.TrainJobTrigger``
must keep giving the trigger, which then serializes itself under its new path.
"""

from airflow_provider_sft.triggers.training_job import TrainingJobTrigger as TrainJobTrigger

__all__ = ["TrainJobTrigger"]

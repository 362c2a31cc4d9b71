"""Airflow operators: resolve dataset -> prepare data -> train -> export model -> report, linked by XCom."""

import airflow_provider_sft.version_compat  # noqa: F401  (refuses an Airflow older than 3.1, as providers do)
from airflow_provider_sft.operators.dataset import ResolveDatasetOperator
from airflow_provider_sft.operators.evaluate import EvaluateModelOperator
from airflow_provider_sft.operators.export import ExportModelOperator, LossChartOperator
from airflow_provider_sft.operators.prepare import PrepareDataOperator
from airflow_provider_sft.operators.train import SFTTrainOperator
from airflow_provider_sft.operators.validate import ValidateRunOperator

__all__ = [
    "EvaluateModelOperator",
    "ExportModelOperator",
    "LossChartOperator",
    "PrepareDataOperator",
    "ResolveDatasetOperator",
    "SFTTrainOperator",
    "ValidateRunOperator",
]

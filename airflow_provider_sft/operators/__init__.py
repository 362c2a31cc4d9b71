"""Airflow operators: resolve dataset -> prepare data -> train -> export model -> report, linked by XCom."""

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

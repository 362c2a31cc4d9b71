"""SFT pipeline: resolve_dataset -> train -> export_model -> report.

Trigger it from the UI form, the REST API (``conf``) or ``airflow dags test``:

    airflow dags test sft_pipeline -c '{"base_model": "/path/to/model", "resource_gpu_per_worker": 0}'

Each task hands its result to the next through XCom: the dataset path and stats,
the training run directory, the exported model path and metrics, the chart path.
Files go under ``workspace`` (the local stand-in for the training PVC).
"""

from __future__ import annotations

import os

from airflow.sdk import DAG, Param

from airflow_provider_sft.core.dataset import BUNDLED_SOURCE
from airflow_provider_sft.operators import (
    ExportModelOperator,
    LossChartOperator,
    ResolveDatasetOperator,
    SFTTrainOperator,
)
from airflow_provider_sft.operators.train import TRAINING_PARAMETERS
from airflow_provider_sft.params_form import training_params

DEFAULT_WORKSPACE = os.environ.get("SFT_WORKSPACE", "/tmp/airflow-sft-workspace")

with DAG(
    dag_id="sft_pipeline",
    description="Supervised fine-tuning with instructlab-training: dataset -> train -> export -> report",
    schedule=None,
    catchup=False,
    tags=["sft", "llm", "training"],
    render_template_as_native_obj=True,  # params keep their types (None stays None)
    params={
        "backend": Param(
            "local",
            type="string",
            enum=["local", "kubernetes"],
            title="Backend",
            description="Where training runs.",
            section="Pipeline",
        ),
        "dataset": Param(
            BUNDLED_SOURCE,
            type="string",
            title="Dataset",
            description="'bundled' (sample shipped with the provider), a JSONL file or a directory of them.",
            section="Pipeline",
        ),
        "workspace": Param(
            DEFAULT_WORKSPACE,
            type="string",
            title="Workspace",
            description="Workspace root: a local directory, or the PVC mount path in the training pod (kubernetes).",
            section="Pipeline",
        ),
        "namespace": Param(
            "",
            type="string",
            title="Namespace",
            description="TrainJob namespace ('' = the connection's).",
            section="Kubernetes",
        ),
        "runtime_name": Param(
            "training-hub",
            type="string",
            title="Runtime",
            description="ClusterTrainingRuntime name.",
            section="Kubernetes",
        ),
        "pvc_name": Param(
            "",
            type="string",
            title="PVC",
            description="Workspace PVC mounted at `workspace`.",
            section="Kubernetes",
        ),
        **training_params(),
    },
) as dag:
    resolve_dataset = ResolveDatasetOperator(
        task_id="resolve_dataset", source="{{ params.dataset }}", workspace="{{ params.workspace }}"
    )
    train = SFTTrainOperator(
        task_id="train",
        backend="{{ params.backend }}",
        dataset_path=resolve_dataset.output["path"],
        workspace="{{ params.workspace }}",
        namespace="{{ params.namespace }}",
        runtime_name="{{ params.runtime_name }}",
        pvc_name="{{ params.pvc_name }}",
        deferrable=True,  # kubernetes: wait in the triggerer, not in a worker slot
        **{name: "{{ params." + name + " }}" for name in TRAINING_PARAMETERS},
    )
    export_model = ExportModelOperator(
        task_id="export_model",
        training_output_dir=train.output["output_dir"],
        workspace="{{ params.workspace }}",
    )
    report = LossChartOperator(
        task_id="report", training_output_dir=train.output["output_dir"], workspace="{{ params.workspace }}"
    )
    resolve_dataset >> train >> export_model >> report

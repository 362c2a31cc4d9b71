"""SFT pipeline: validate -> resolve_dataset -> prepare_data -> train -> export_model -> report.

The export publishes the model to ``publish_to`` (S3, the Hub; empty: it stays in the workspace)
and emits its Airflow Asset, which starts ``sft_evaluate`` (dags/sft_evaluate.py).

Trigger it from the UI form (``sft-demo --serve`` starts an Airflow with this DAG whose form
defaults train the demo's tiny model), the REST API (``conf``) or ``airflow dags test``:

    airflow dags test sft_pipeline -c '{"base_model": "/path/to/model", "resource_gpu_per_worker": 0}'

Each task hands its result to the next through XCom: the dataset path and stats, the data
report (tokenized on a CPU before any GPU is asked for; the gate stops a run that would lose
more than ``max_dropped_fraction`` of its samples), the training run directory, the exported
model path and metrics, the chart path.
Files go under ``workspace``. On the kubernetes backend the training PVC (``pvc_name``) is the
workspace of the cluster: in ``cluster`` mode (the default) the worker does not mount it, and
dataset resolution and export run in pods next to it; in ``shared`` mode the worker mounts
it at ``workspace``. The loss chart is always drawn here, under ``workspace``.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import DAG

from airflow_provider_sft.operators import (
    ExportModelOperator,
    LossChartOperator,
    PrepareDataOperator,
    ResolveDatasetOperator,
    SFTTrainOperator,
    ValidateRunOperator,
)
from airflow_provider_sft.operators.train import TRAINING_PARAMETERS
from airflow_provider_sft.params_form import form_defaults, pipeline_params

DEFAULT_WORKSPACE = os.environ.get("SFT_WORKSPACE", "/tmp/airflow-sft-workspace")

#: The TrainJob settings the workspace steps (resolve, export) share with training.
STEP_KUBERNETES = {
    "namespace": "{{ params.namespace }}",
    "job_kind": "{{ params.job_kind }}",
    "image": "{{ params.image }}",
    "runtime_name": "{{ params.runtime_name }}",
    "job_labels": "{{ params.job_labels }}",
    "pvc_name": "{{ params.pvc_name }}",
}
WORKSPACE_STEPS: dict[str, Any] = {
    "backend": "{{ params.backend }}",
    "workspace_mode": "{{ params.workspace_mode }}",
    "kubernetes": STEP_KUBERNETES,
}

with DAG(
    dag_id="sft_pipeline",
    description="Supervised fine-tuning with instructlab-training: dataset -> train -> export -> report",
    schedule=None,
    catchup=False,
    tags=["sft", "llm", "training"],
    render_template_as_native_obj=True,  # params keep their types (None stays None)
    params=pipeline_params(DEFAULT_WORKSPACE, **form_defaults()),
) as dag:
    validate = ValidateRunOperator(  # every bad input, named, before any task does work
        task_id="validate",
        training={name: "{{ params." + name + " }}" for name in TRAINING_PARAMETERS},
        dataset={
            name: "{{ params." + param + " }}"
            for name, param in (
                ("format", "dataset_format"),
                ("mapping", "dataset_mapping"),
                ("on_bad_record", "on_bad_record"),
                ("split", "dataset_split"),
                ("subset", "dataset_subset"),
                ("revision", "dataset_revision"),
            )
        },
        backend="{{ params.backend }}",
        workspace_mode="{{ params.workspace_mode }}",
        kubernetes=STEP_KUBERNETES,
        workspace="{{ params.workspace }}",  # never /, a system or a home directory
        max_dropped_fraction="{{ params.max_dropped_fraction }}",
        resume="{{ params.resume }}",
        checkpoint_grace_seconds="{{ params.checkpoint_grace_seconds }}",
        gpu_hour_cost="{{ params.gpu_hour_cost }}",
        publish_to="{{ params.publish_to }}",
        aws_conn_id="{{ params.aws_conn_id }}",
        hf_conn_id="{{ params.hf_conn_id }}",
    )
    resolve_dataset = ResolveDatasetOperator(
        task_id="resolve_dataset",
        source="{{ params.dataset }}",
        workspace="{{ params.workspace }}",
        format="{{ params.dataset_format }}",
        mapping="{{ params.dataset_mapping }}",
        on_bad_record="{{ params.on_bad_record }}",
        split="{{ params.dataset_split }}",
        subset="{{ params.dataset_subset }}",
        revision="{{ params.dataset_revision }}",
        hf_conn_id="{{ params.hf_conn_id }}",
        aws_conn_id="{{ params.aws_conn_id }}",
        **WORKSPACE_STEPS,
    )
    prepare_data = PrepareDataOperator(  # tokenize and judge the data on a CPU, before any GPU
        task_id="prepare_data",
        # .output is typed XComArg but is a PlainXComArg, whose [key] reads that XCom key
        dataset_path=resolve_dataset.output["path"],  # type: ignore[index]
        workspace="{{ params.workspace }}",
        base_model="{{ params.base_model }}",
        max_seq_len="{{ params.max_seq_len }}",
        effective_batch_size="{{ params.effective_batch_size }}",
        num_epochs="{{ params.num_epochs }}",
        data_output_dir="{{ params.data_output_dir }}",
        max_dropped_fraction="{{ params.max_dropped_fraction }}",
        hf_conn_id="{{ params.hf_conn_id }}",
        **WORKSPACE_STEPS,
    )
    train = SFTTrainOperator(
        task_id="train",
        backend="{{ params.backend }}",
        # .output is typed XComArg but is a PlainXComArg, whose [key] reads that XCom key
        dataset_path=resolve_dataset.output["path"],  # type: ignore[index]
        workspace="{{ params.workspace }}",
        namespace="{{ params.namespace }}",
        job_kind="{{ params.job_kind }}",
        image="{{ params.image }}",
        runtime_name="{{ params.runtime_name }}",
        job_labels="{{ params.job_labels }}",
        pvc_name="{{ params.pvc_name }}",
        workspace_mode="{{ params.workspace_mode }}",
        hf_conn_id="{{ params.hf_conn_id }}",
        max_dropped_fraction="{{ params.max_dropped_fraction }}",
        resume="{{ params.resume }}",  # auto: a retry or a preempted job continues from its saved state
        checkpoint_grace_seconds="{{ params.checkpoint_grace_seconds }}",
        deferrable=True,  # kubernetes: wait in the triggerer, not in a worker slot
        # templates, rendered to each parameter's type at run time (render_template_as_native_obj)
        **{name: "{{ params." + name + " }}" for name in TRAINING_PARAMETERS},  # type: ignore[arg-type]
    )
    export_model = ExportModelOperator(
        task_id="export_model",
        training_output_dir=train.output["output_dir"],  # type: ignore[index]  # as above
        job_created=train.output["job_created"],  # type: ignore[index]  # as above
        gpu_hour_cost="{{ params.gpu_hour_cost }}",
        workspace="{{ params.workspace }}",
        publish_to="{{ params.publish_to }}",  # empty: the model stays in the workspace
        aws_conn_id="{{ params.aws_conn_id }}",
        hf_conn_id="{{ params.hf_conn_id }}",
        **WORKSPACE_STEPS,
    )  # emits the model's asset event (alias sft_models): sft_evaluate runs next
    report = LossChartOperator(
        task_id="report",
        training_output_dir=train.output["output_dir"],  # type: ignore[index]  # as above
        steps=export_model.output["steps"],  # type: ignore[index]  # as above
        resumes=export_model.output["resumes"],  # type: ignore[index]  # as above
        validation=export_model.output["validation"],  # type: ignore[index]  # as above
        efficiency=export_model.output["efficiency"],  # type: ignore[index]  # as above
        workspace="{{ params.workspace }}",
    )
    validate >> resolve_dataset >> prepare_data >> train >> export_model >> report

"""SFT pipeline: resolve_dataset -> train -> export_model -> report.

Trigger it from the UI form, the REST API (``conf``) or ``airflow dags test``:

    airflow dags test sft_pipeline -c '{"base_model": "/path/to/model", "resource_gpu_per_worker": 0}'

Each task hands its result to the next through XCom: the dataset path and stats,
the training run directory, the exported model path and metrics, the chart path.
Files go under ``workspace``. On the kubernetes backend the training PVC (``pvc_name``) is the
workspace of the cluster: in ``cluster`` mode (the default) the worker does not mount it, and
dataset resolution and export run in pods next to it; in ``shared`` mode the worker mounts
it at ``workspace``. The loss chart is always drawn here, under ``workspace``.
"""

from __future__ import annotations

import os

from airflow.sdk import DAG, Param

from airflow_provider_sft.core.dataset import BUNDLED_SOURCE, Format, Mapping, OnBadRecord
from airflow_provider_sft.operators import (
    ExportModelOperator,
    LossChartOperator,
    ResolveDatasetOperator,
    SFTTrainOperator,
    ValidateRunOperator,
)
from airflow_provider_sft.operators.train import TRAINING_PARAMETERS
from airflow_provider_sft.params_form import training_params

DEFAULT_WORKSPACE = os.environ.get("SFT_WORKSPACE", "/tmp/airflow-sft-workspace")

#: The TrainJob settings the workspace steps (resolve, export) share with training.
STEP_KUBERNETES = {
    "namespace": "{{ params.namespace }}",
    "runtime_name": "{{ params.runtime_name }}",
    "job_labels": "{{ params.job_labels }}",
    "pvc_name": "{{ params.pvc_name }}",
}
WORKSPACE_STEPS = {
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
            minLength=1,
            title="Dataset source",
            description=(
                "'bundled' (sample shipped with the provider); a path (absolute, or relative to the workspace) "
                "to a file or a directory of shards; s3://bucket/key-or-prefix/; an http(s):// URL; or a "
                "HuggingFace dataset org/name[@revision][:split]."
            ),
            section="Dataset",
        ),
        "dataset_format": Param(
            Format.AUTO.value,
            type="string",
            enum=[f.value for f in Format],
            title="Format",
            description="auto: from the file name, then the content. gzip/zstd are recognised by themselves.",
            section="Dataset",
        ),
        "dataset_mapping": Param(
            Mapping.MESSAGES.value,
            type="string",
            enum=[m.value for m in Mapping],
            title="Record layout",
            description="messages (chat samples), or convert prompt/completion or instruction/input/output records.",
            section="Dataset",
        ),
        "on_bad_record": Param(
            OnBadRecord.FAIL.value,
            type="string",
            enum=[o.value for o in OnBadRecord],
            title="Bad records",
            description="fail on the first bad record (naming file, line and field), or skip and count them.",
            section="Dataset",
        ),
        "dataset_split": Param(
            "",
            type="string",
            title="HF split",
            description="HuggingFace split ('' = train).",
            section="Dataset",
        ),
        "dataset_subset": Param(
            "",
            type="string",
            title="HF subset",
            description="HuggingFace subset directory.",
            section="Dataset",
        ),
        "dataset_revision": Param(
            "",
            type="string",
            title="HF revision",
            description="Branch, tag or commit ('' = main).",
            section="Dataset",
        ),
        "hf_conn_id": Param(
            "",
            type="string",
            title="HuggingFace connection",
            description="A 'huggingface' connection id (token, endpoint); '' = HF_TOKEN from the environment.",
            section="Dataset",
        ),
        "aws_conn_id": Param(
            "",
            type="string",
            title="S3 connection",
            description="An 'aws' connection id for s3:// sources (keys, region, endpoint_url); '' = environment.",
            section="Dataset",
        ),
        "workspace": Param(
            DEFAULT_WORKSPACE,
            type="string",
            title="Workspace",
            description="Workspace on the Airflow side: the local backend's files and the loss chart; in shared mode, where the worker mounts the PVC.",
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
            "torch-distributed",
            type="string",
            title="Runtime",
            description="ClusterTrainingRuntime: torch-distributed upstream, training-hub on OpenShift AI.",
            section="Kubernetes",
        ),
        "job_labels": Param(
            "",
            type="string",
            title="TrainJob labels",
            description="Labels of the TrainJob itself, k=v,k=v: e.g. kueue.x-k8s.io/queue-name=gpu-queue.",
            section="Kubernetes",
        ),
        "workspace_mode": Param(
            "cluster",
            type="string",
            enum=["cluster", "shared"],
            title="Workspace mode",
            description="cluster: only the cluster mounts the PVC (at /workspace); shared: the worker mounts it at `workspace` too.",
            section="Kubernetes",
        ),
        "pvc_name": Param(
            "",
            type="string",
            title="PVC",
            description="The workspace PVC (required on kubernetes; ReadWriteMany for more than one worker).",
            section="Kubernetes",
        ),
        **training_params(),
    },
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
    train = SFTTrainOperator(
        task_id="train",
        backend="{{ params.backend }}",
        dataset_path=resolve_dataset.output["path"],
        workspace="{{ params.workspace }}",
        namespace="{{ params.namespace }}",
        runtime_name="{{ params.runtime_name }}",
        job_labels="{{ params.job_labels }}",
        pvc_name="{{ params.pvc_name }}",
        workspace_mode="{{ params.workspace_mode }}",
        hf_conn_id="{{ params.hf_conn_id }}",
        deferrable=True,  # kubernetes: wait in the triggerer, not in a worker slot
        **{name: "{{ params." + name + " }}" for name in TRAINING_PARAMETERS},
    )
    export_model = ExportModelOperator(
        task_id="export_model",
        training_output_dir=train.output["output_dir"],
        workspace="{{ params.workspace }}",
        **WORKSPACE_STEPS,
    )
    report = LossChartOperator(
        task_id="report",
        training_output_dir=train.output["output_dir"],
        steps=export_model.output["steps"],
        workspace="{{ params.workspace }}",
    )
    validate >> resolve_dataset >> train >> export_model >> report

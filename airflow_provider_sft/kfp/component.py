"""The KFP v2 component. No ``from __future__ import annotations``: KFP reads the real annotations."""

import os
from typing import Optional

from kfp import dsl
from kfp.dsl.python_component import PythonComponent

from airflow_provider_sft import __version__

#: The component's container image: the provider and kfp preinstalled (deploy/Containerfile.kfp),
#: so nothing is pip-installed when the step starts. SFT_KFP_BASE_IMAGE names your build of it.
BASE_IMAGE = os.environ.get("SFT_KFP_BASE_IMAGE", f"airflow-provider-sft-kfp:{__version__}")
#: Nothing is installed at run time by default (the provider is not on PyPI; the image has it).
PACKAGES_TO_INSTALL: list[str] = []

#: The TaskConfig fields forwarded to the TrainJob (volumes and env are also applied to this task,
#: so it sees the same workspace PVC as the training pods).
TASK_CONFIG_PASSTHROUGHS = [
    dsl.TaskConfigField.RESOURCES,
    dsl.TaskConfigField.KUBERNETES_TOLERATIONS,
    dsl.TaskConfigField.KUBERNETES_NODE_SELECTOR,
    dsl.TaskConfigField.KUBERNETES_AFFINITY,
    dsl.TaskConfigPassthrough(field=dsl.TaskConfigField.ENV, apply_to_task=True),
    dsl.TaskConfigPassthrough(field=dsl.TaskConfigField.KUBERNETES_VOLUMES, apply_to_task=True),
]


def train_model(
    pvc_path: str,
    output_model: dsl.Output[dsl.Model],
    output_metrics: dsl.Output[dsl.Metrics],
    output_loss_chart: dsl.Output[dsl.HTML],
    dataset: dsl.Input[dsl.Dataset] = None,
    training_base_model: str = "Qwen/Qwen2.5-1.5B-Instruct",
    training_effective_batch_size: int = 128,
    training_max_tokens_per_gpu: int = 10000,
    training_max_seq_len: int = 8192,
    training_learning_rate: Optional[float] = None,
    training_lr_warmup_steps: Optional[int] = None,
    training_checkpoint_at_epoch: Optional[bool] = None,
    training_num_epochs: Optional[int] = None,
    training_data_output_dir: Optional[str] = None,
    training_envs: str = "",
    training_resource_cpu_per_worker: str = "4",
    training_resource_gpu_per_worker: int = 1,
    training_resource_memory_per_worker: str = "64Gi",
    training_resource_num_procs_per_worker: str = "auto",
    training_resource_num_workers: int = 1,
    training_metadata_labels: str = "",
    training_metadata_annotations: str = "",
    training_seed: Optional[int] = None,
    training_use_liger: Optional[bool] = None,
    training_lr_scheduler: Optional[str] = None,
    training_save_samples: Optional[int] = None,
    training_accelerate_full_state_at_epoch: Optional[bool] = None,
    training_fsdp_sharding_strategy: Optional[str] = None,
    kubernetes_config: dsl.TaskConfig = None,
) -> str:
    """Train model using SFT (Supervised Fine-Tuning) via TrainingHub (instructlab-training backend).

    Args:
        pvc_path: Workspace PVC root path (use dsl.WORKSPACE_PATH_PLACEHOLDER).
        output_model: Output model artifact.
        output_metrics: Output training metrics artifact.
        output_loss_chart: Output HTML artifact with training loss chart.
        dataset: Input training dataset artifact.
        training_base_model: Base model (HuggingFace ID or local path).
        training_effective_batch_size: Effective batch size per optimizer step.
        training_max_tokens_per_gpu: Max tokens per GPU (memory cap).
        training_max_seq_len: Max sequence length in tokens.
        training_learning_rate: Learning rate (default: 5e-6).
        training_lr_warmup_steps: Learning rate warmup steps.
        training_checkpoint_at_epoch: Save checkpoint at each epoch.
        training_num_epochs: Number of training epochs (default: 1).
        training_data_output_dir: Directory for processed training data.
        training_envs: Environment overrides as KEY=VAL,KEY=VAL.
        training_resource_cpu_per_worker: CPU cores per worker.
        training_resource_gpu_per_worker: GPUs per worker.
        training_resource_memory_per_worker: Memory per worker (e.g., 64Gi).
        training_resource_num_procs_per_worker: Processes per worker (auto or int).
        training_resource_num_workers: Number of training pods.
        training_metadata_labels: Pod labels as key=value,key=value.
        training_metadata_annotations: Pod annotations as key=value,key=value.
        training_seed: Random seed for reproducibility.
        training_use_liger: Enable Liger kernel optimizations.
        training_lr_scheduler: LR scheduler type (cosine, linear, etc.).
        training_save_samples: Number of samples to save.
        training_accelerate_full_state_at_epoch: Save full accelerate state.
        training_fsdp_sharding_strategy: FSDP sharding strategy (FULL_SHARD, HYBRID_SHARD, NO_SHARD).
        kubernetes_config: KFP TaskConfig for volumes/env/resources passthrough.

    Returns:
        Status message ("training completed").
    """
    arguments = dict(locals())  # first: exactly the parameters above
    from airflow_provider_sft.kfp.runner import run_train_model

    return run_train_model(**arguments)


_train_model_function = train_model


def make_train_model(
    *,
    packages_to_install: Optional[list[str]] = None,
    install_kfp_package: bool = False,
    base_image: Optional[str] = None,
) -> PythonComponent:
    """Build the component on ``base_image`` (default :data:`BASE_IMAGE`, which has the provider and kfp).

    ``packages_to_install`` (and ``install_kfp_package=True``) are for a base image without them,
    such as ``python:3.11`` with an index that serves your wheel of this provider.
    """
    return dsl.component(
        _train_model_function,
        base_image=base_image or BASE_IMAGE,
        packages_to_install=PACKAGES_TO_INSTALL if packages_to_install is None else packages_to_install,
        install_kfp_package=install_kfp_package,
        task_config_passthroughs=TASK_CONFIG_PASSTHROUGHS,
    )


train_model = make_train_model()

"""The torchrun command that runs instructlab-training's ``main_ds`` on CUDA.

``instructlab.training.run_training`` cannot be used as is: ``TrainingArgs`` has no
``lr_scheduler`` (so the original component silently dropped it), and it swallows
a failed launch (a ``return`` in ``finally``). We build the same command it
builds, plus ``--lr_scheduler``, and run it ourselves so the exit status counts.

Distributed settings come from torchrun's ``PET_*`` environment variables when
Kubeflow Trainer sets them (``PET_NNODES``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``
...); otherwise the run is a standalone single-node one.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.params import SFTParams


def main_ds_path() -> str:
    from instructlab.training import main_ds

    return main_ds.__file__


def torchrun_launch_args(params: SFTParams, env: Mapping[str, str], *, gpus_visible: int) -> list[str]:
    """torchrun flags; Kubeflow Trainer's PET_* variables win over our single-node defaults."""
    nproc = params.resource_num_procs_per_worker
    args = [f"--nproc-per-node={gpus_visible if nproc == 'auto' else nproc}"]
    if "PET_NNODES" in env or "PET_MASTER_ADDR" in env:
        return args  # torchrun reads nnodes, node rank and rendezvous from PET_*
    return [*args, f"--nnodes={params.resource_num_workers}", "--node-rank=0", "--standalone"]


def main_ds_args(
    params: SFTParams,
    *,
    model_path: str,
    processed_data_dir: str | Path,
    output_dir: str | Path,
    flash_attn_available: bool,
    on_demand_checkpointing: bool = False,
) -> list[str]:
    """``main_ds`` flags for every training parameter (the same flags ``run_training`` emits).

    ``on_demand_checkpointing`` (``resume="auto"``): the workers save a full state when the
    parent writes the trigger file on SIGTERM (see :func:`preemption.run_checkpointing_on_sigterm`).
    """
    args = [
        f"--model_name_or_path={model_path}",
        f"--data_path={Path(processed_data_dir) / c.PROCESSED_DATA_FILE}",
        f"--output_dir={output_dir}",
        f"--num_epochs={params.num_epochs}",
        f"--effective_batch_size={params.effective_batch_size}",
        f"--learning_rate={params.learning_rate}",
        f"--lr_scheduler={params.lr_scheduler.value}",
        f"--num_warmup_steps={params.lr_warmup_steps}",
        f"--save_samples={params.save_samples}",
        "--log_level=INFO",
        f"--max_batch_len={params.max_tokens_per_gpu}",
        f"--seed={params.seed}",
        f"--adamw_weight_decay={c.ADAMW_WEIGHT_DECAY}",
        f"--adamw_beta1={c.ADAMW_BETAS[0]}",
        f"--adamw_beta2={c.ADAMW_BETAS[1]}",
        f"--adamw_eps={c.ADAMW_EPS}",
        "--distributed_training_framework=fsdp",
        f"--fsdp_sharding_strategy={params.fsdp_sharding_strategy.value}",
    ]
    if params.use_liger:
        args.append("--use_liger")
    if params.checkpoint_at_epoch:
        args.append("--checkpoint_at_epoch")
    if params.accelerate_full_state_at_epoch:
        args.append("--accelerate_full_state_at_epoch")
    if not flash_attn_available:
        args.append("--disable_flash_attn")
    if on_demand_checkpointing:
        args.append("--on_demand_checkpointing")
    if params.validation_split > 0:  # as run_training emits them: only with a split
        args.append(f"--validation_split={params.validation_split}")
        args.append(f"--validation_frequency={params.validation_frequency}")
    return args


def build_command(
    params: SFTParams,
    *,
    model_path: str,
    processed_data_dir: str | Path,
    output_dir: str | Path,
    env: Mapping[str, str],
    gpus_visible: int,
    flash_attn_available: bool,
    on_demand_checkpointing: bool = False,
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *torchrun_launch_args(params, env, gpus_visible=gpus_visible),
        main_ds_path(),
        *main_ds_args(
            params,
            model_path=model_path,
            processed_data_dir=processed_data_dir,
            output_dir=output_dir,
            flash_attn_available=flash_attn_available,
            on_demand_checkpointing=on_demand_checkpointing,
        ),
    ]

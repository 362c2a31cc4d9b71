"""The same training, two ways: the arguments our entrypoint gives instructlab-training's ``main_ds``,
and the ``TrainingArgs`` that make bare ``run_training`` give it the same ones.

The GPU check (``gpu_check.py``) compares two runs; the comparison means something only if both
train the same thing. So both runs' ``main_ds`` arguments are read by main_ds's own argparser
(:func:`main_ds_parser`) and compared (:func:`argument_differences`): on the GPU machine before the
phases, and here by ``tests/unit/test_gpu_check.py``.
"""

from __future__ import annotations

import argparse
import ast
import logging
import uuid
from pathlib import Path
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.params import SFTParams


def flash_attn_available() -> bool:
    from airflow_provider_sft.core.pod.entrypoint import _flash_attn_available

    return _flash_attn_available()


def training_args(params: SFTParams, *, dataset_path: str, output_dir: Path, cpu_procs: int) -> Any:
    """The ``TrainingArgs`` of the bare run: every parameter our entrypoint gives ``main_ds``.

    ``TrainingArgs`` has no ``lr_scheduler``: main_ds's default, cosine, is what the check's
    parameters ask for (and the argument comparison checks). On-demand checkpointing is what our
    entrypoint asks for with ``resume="auto"``, the default.
    """
    from instructlab.training.config import DistributedBackend, FSDPOptions, ShardingStrategies, TrainingArgs

    from airflow_provider_sft.core.training.resume import RESUME_AUTO

    return TrainingArgs(
        model_path=params.base_model,
        data_path=dataset_path,
        ckpt_output_dir=str(output_dir),
        data_output_dir=str(output_dir / c.PROCESSED_DIR),
        max_seq_len=params.max_seq_len,
        max_batch_len=params.max_tokens_per_gpu,
        num_epochs=params.num_epochs,
        effective_batch_size=params.effective_batch_size,
        save_samples=params.save_samples,
        learning_rate=params.learning_rate,
        warmup_steps=params.lr_warmup_steps,
        random_seed=params.seed,
        adamw_weight_decay=c.ADAMW_WEIGHT_DECAY,
        adamw_betas=c.ADAMW_BETAS,
        adamw_eps=c.ADAMW_EPS,
        checkpoint_at_epoch=params.checkpoint_at_epoch,
        accelerate_full_state_at_epoch=params.accelerate_full_state_at_epoch,
        fsdp_options=FSDPOptions(sharding_strategy=ShardingStrategies(params.fsdp_sharding_strategy.value)),
        distributed_backend=DistributedBackend.FSDP,
        disable_flash_attn=not flash_attn_available(),
        use_liger=params.use_liger,
        process_data=True,
        data_process_num_cpu_procs=cpu_procs,
        validation_split=params.validation_split,
        validation_frequency=params.validation_frequency,
        on_demand_checkpointing=c.DEFAULT_RESUME == RESUME_AUTO,
        log_level="INFO",
    )


def torchrun_args(gpus: int) -> Any:
    from instructlab.training.config import TorchrunArgs

    return TorchrunArgs(nproc_per_node=max(gpus, 1), nnodes=1, node_rank=0, rdzv_id=uuid.uuid4().hex[:8])


def main_ds_parser() -> argparse.ArgumentParser:
    """main_ds's own argparser: the ``add_argument`` calls of its ``__main__`` block, run as they are.

    main_ds builds its parser inline under ``if __name__ == "__main__"``; this runs that block's
    statements up to ``parse_args`` in the module's namespace, so a flag main_ds refuses, or reads
    with another type or default, is seen here as it would be there.
    """
    from instructlab.training import main_ds

    tree = ast.parse(Path(main_ds.__file__).read_text())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If)
        and "__main__" in ast.unparse(node.test)
        and "__name__" in ast.unparse(node.test)
    )
    statements = []
    for statement in block.body:
        if "parse_args" in ast.unparse(statement):
            break
        statements.append(statement)
    namespace = dict(vars(main_ds))
    exec(compile(ast.Module(body=statements, type_ignores=[]), main_ds.__file__, "exec"), namespace)
    parser = namespace["parser"]
    assert isinstance(parser, argparse.ArgumentParser)
    return parser


def parse_main_ds_args(args: list[str]) -> dict[str, Any]:
    """``args`` as main_ds's argparser reads them (it exits on an argument it refuses)."""
    return vars(main_ds_parser().parse_args(args))


def run_training_command(train_args: Any, torch_args: Any) -> list[str]:
    """The command ``run_training`` builds for these arguments, captured instead of run.

    ``process_data`` is turned off for the capture (nothing is tokenized) and its process
    stand-in reports success; everything else is ``run_training``'s own code.
    """
    from instructlab.training import main_ds

    captured: list[list[str]] = []

    class Captured:
        def __init__(self, _log_path: str, command: list[str]):
            captured.append(list(command))

        def listen(self) -> None:
            return None

        def wait(self, timeout: float | None = None) -> int:
            return 0

        def poll(self) -> int:
            return 0

    original = main_ds.StreamablePopen
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    main_ds.StreamablePopen = Captured
    try:
        main_ds.run_training(torch_args, train_args.model_copy(update={"process_data": False}))
    finally:
        main_ds.StreamablePopen = original
        root.handlers[:], root.level = handlers, level  # run_training sets up its own logging
    return captured[0]


#: Arguments that name where each run reads and writes: different by design.
PER_RUN_ARGUMENTS = frozenset({"data_path", "output_dir"})


def argument_differences(ours: list[str], bare: list[str]) -> dict[str, list[Any]]:
    """``{argument: [ours, bare]}`` for each main_ds argument the two runs set differently."""
    parsed_ours, parsed_bare = parse_main_ds_args(ours), parse_main_ds_args(bare)
    return {
        key: [parsed_ours.get(key), parsed_bare.get(key)]
        for key in sorted(set(parsed_ours) | set(parsed_bare))
        if key not in PER_RUN_ARGUMENTS and parsed_ours.get(key) != parsed_bare.get(key)
    }


def ours_main_ds_args(params: SFTParams, *, processed_dir: str, output_dir: str) -> list[str]:
    from airflow_provider_sft.core.training.instructlab_command import main_ds_args
    from airflow_provider_sft.core.training.resume import RESUME_AUTO

    return main_ds_args(
        params,
        model_path=params.base_model,
        processed_data_dir=processed_dir,
        output_dir=output_dir,
        flash_attn_available=flash_attn_available(),
        on_demand_checkpointing=c.DEFAULT_RESUME == RESUME_AUTO,
    )


def script_args(command: list[str]) -> list[str]:
    """The arguments after the main_ds script in a torchrun command."""
    script = next(i for i, arg in enumerate(command) if arg.endswith("main_ds.py"))
    return command[script + 1 :]

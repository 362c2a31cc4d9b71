"""The CUDA path's torchrun + instructlab ``main_ds`` command, checked against the installed main_ds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.training.instructlab_command import build_command, main_ds_path


def main_ds_flags() -> set[str]:
    """Every ``--flag`` the installed instructlab-training main_ds argparse accepts."""
    source = Path(main_ds_path()).read_text()
    return set(re.findall(r'add_argument\(\s*"(--[a-z_0-9-]+)"', source))


def command(env=None, on_demand_checkpointing=False, **values):
    params = SFTParams.parse(values)
    return build_command(
        params,
        model_path="/models/base",
        processed_data_dir="/ws/runs/r/data",
        output_dir="/ws/runs/r",
        env=env or {},
        gpus_visible=4,
        flash_attn_available=False,
        on_demand_checkpointing=on_demand_checkpointing,
    )


def flags(cmd: list[str]) -> dict[str, str | bool]:
    script = cmd.index(main_ds_path())
    out: dict[str, str | bool] = {}
    for arg in cmd[script + 1 :]:
        name, sep, value = arg.partition("=")
        out[name] = value if sep else True
    return out


def test_every_parameter_is_mapped():
    cmd = command(
        learning_rate=2e-5,
        lr_scheduler="linear",
        lr_warmup_steps=25,
        seed=7,
        save_samples=1000,
        max_tokens_per_gpu=20000,
        effective_batch_size=64,
        num_epochs=2,
        fsdp_sharding_strategy="FULL_SHARD",
        use_liger=True,
        checkpoint_at_epoch=True,
        accelerate_full_state_at_epoch=False,
    )
    f = flags(cmd)
    assert f["--learning_rate"] == "2e-05"
    assert f["--lr_scheduler"] == "linear"  # dropped by run_training / the original component
    assert f["--num_warmup_steps"] == "25"
    assert f["--seed"] == "7"
    assert f["--save_samples"] == "1000"
    assert f["--max_batch_len"] == "20000"
    assert f["--effective_batch_size"] == "64"
    assert f["--num_epochs"] == "2"
    assert f["--fsdp_sharding_strategy"] == "FULL_SHARD"
    assert f["--use_liger"] is True and f["--checkpoint_at_epoch"] is True
    assert "--accelerate_full_state_at_epoch" not in f
    assert f["--data_path"] == "/ws/runs/r/data/data.jsonl"
    assert f["--disable_flash_attn"] is True


def test_on_demand_checkpointing_is_asked_for_only_when_resuming():
    """resume="auto": the workers save a full state on the parent's trigger (SIGTERM), else they do not."""
    assert flags(command(on_demand_checkpointing=True))["--on_demand_checkpointing"] is True
    assert "--on_demand_checkpointing" not in flags(command())


def test_every_flag_exists_in_the_installed_main_ds():
    emitted = set(flags(command(use_liger=True, on_demand_checkpointing=True)))
    unknown = emitted - main_ds_flags()
    assert not unknown, f"main_ds does not accept {sorted(unknown)}"


@pytest.mark.parametrize(
    ("env", "values", "expected"),
    [
        pytest.param(
            {}, {}, ["--nproc-per-node=4", "--nnodes=1", "--node-rank=0", "--standalone"], id="local-auto"
        ),
        pytest.param(
            {},
            {"resource_num_procs_per_worker": 2, "resource_gpu_per_worker": 4},
            ["--nproc-per-node=2"],
            id="explicit-procs",
        ),
        pytest.param(
            {"PET_NNODES": "2", "PET_MASTER_ADDR": "job-node-0"},
            {},
            ["--nproc-per-node=4"],
            id="kubeflow-pet-env",
        ),
    ],
)
def test_torchrun_launch(env, values, expected):
    cmd = command(env=env, **values)
    launch = cmd[3 : cmd.index(main_ds_path())]
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert launch[: len(expected)] == expected
    if env:
        assert launch == expected  # torchrun takes nnodes/rank/rendezvous from PET_*


def test_a_clean_start_removes_what_instructlab_would_resume_from(tmp_path):
    """instructlab-training resumes from any full_state/: a clean start removes it, and the run's identity."""
    from airflow_provider_sft.core.training.resume import start_clean

    (tmp_path / "full_state" / "epoch_0").mkdir(parents=True)
    (tmp_path / "full_state.run.json").write_text("{}")
    (tmp_path / "hf_format" / "samples_64").mkdir(parents=True)
    (tmp_path / "training_params_and_metrics_global0.jsonl").write_text("{}\n")
    (tmp_path / "data").mkdir()
    assert start_clean(tmp_path) == [
        "full_state",
        "full_state.run.json",
        "hf_format",
        "training_params_and_metrics_global0.jsonl",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert start_clean(tmp_path) == []


def parse_with_main_ds_argparser(argv: list[str], monkeypatch) -> object:
    """Run the installed main_ds's own ``__main__`` argparser (and its validation checks) on ``argv``.

    main_ds builds its parser inside ``if __name__ == "__main__"``: the statements of that block up
    to the one after ``parse_args()`` (instructlab's own validation_split/frequency check) run in
    the module's namespace, so the parser, its types and its ``parser.error`` are instructlab's.
    """
    import ast
    import sys

    from instructlab.training import main_ds

    tree = ast.parse(Path(main_ds.__file__).read_text())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'"
    )
    parsed_at = next(i for i, node in enumerate(block.body) if "parser.parse_args()" in ast.unparse(node))
    validation_check = block.body[parsed_at + 1]
    assert "validation_split" in ast.unparse(validation_check), (
        "main_ds no longer checks it right after parsing"
    )
    statements = ast.Module(body=block.body[: parsed_at + 2], type_ignores=[])
    namespace = dict(vars(main_ds))
    monkeypatch.setattr(sys, "argv", ["main_ds.py", *argv])
    exec(compile(statements, main_ds.__file__, "exec"), namespace)
    return namespace["args"]


def main_ds_argv(cmd: list[str]) -> list[str]:
    return cmd[cmd.index(main_ds_path()) + 1 :]


def test_instructlabs_own_argparser_takes_our_command_with_validation(monkeypatch):
    """Our flags, validation ones included, parse into the values main_ds trains with."""
    args = parse_with_main_ds_argparser(
        main_ds_argv(
            command(validation_split=0.1, validation_frequency=25, learning_rate=2e-5, use_liger=True)
        ),
        monkeypatch,
    )
    assert (args.validation_split, args.validation_frequency) == (0.1, 25)
    assert (args.learning_rate, args.lr_scheduler, args.use_liger) == (2e-5, "cosine", True)


def test_without_a_split_no_validation_flag_is_emitted_and_main_ds_defaults_to_none(monkeypatch):
    """As run_training does: the flags only with a split > 0 (a lone frequency would change nothing)."""
    argv = main_ds_argv(command(validation_frequency=25))
    assert not [arg for arg in argv if arg.startswith("--validation")]
    args = parse_with_main_ds_argparser(argv, monkeypatch)
    assert (args.validation_split, args.validation_frequency) == (0.0, None)


def test_main_ds_refuses_a_split_without_a_frequency_as_we_do_before_any_task(monkeypatch, capsys):
    """The check our parameters make first is instructlab's own (on the training node, minutes later)."""
    with pytest.raises(SystemExit):
        parse_with_main_ds_argparser(["--validation_split=0.1"], monkeypatch)
    assert "--validation_frequency must be provided" in capsys.readouterr().err

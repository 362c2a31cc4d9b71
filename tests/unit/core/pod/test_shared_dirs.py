"""The directories the worker creates in a shared workspace are writable by the pods' group."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.pod.steps import shared_dirs


def test_each_created_level_is_group_writable_and_setgid(tmp_path):
    """The pod runs as another UID of the volume's group and writes its run into ``runs/<run>``."""
    run = shared_dirs(tmp_path, Path("runs/manual-1-sft"))
    for level in (tmp_path / "runs", run):
        mode = stat.S_IMODE(level.stat().st_mode)
        assert mode & stat.S_IWGRP and mode & stat.S_ISGID, oct(mode)


def test_an_existing_level_is_left_as_it_is(tmp_path):
    (tmp_path / "runs").mkdir(mode=0o700)
    shared_dirs(tmp_path, Path("runs/r"))
    assert stat.S_IMODE((tmp_path / "runs").stat().st_mode) == 0o700


def test_a_path_leading_out_of_the_workspace_creates_nothing(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    with pytest.raises(InvalidParameterError, match="dataset_dir"):
        shared_dirs(workspace, Path("../outside/run"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ws"]


def test_a_workspace_that_does_not_exist_yet_is_created(tmp_path):
    run = shared_dirs(tmp_path / "new" / "ws", Path("runs/r"))
    assert run.is_dir() and run == tmp_path / "new" / "ws" / "runs" / "r"


def test_the_prepared_data_is_replaceable_by_the_pods_group(tiny_model, tmp_path):
    """A pod of another user whose fingerprint differs (another instructlab version in its image)
    processes again: it must be able to replace what the worker prepared."""
    from airflow_provider_sft.core.pod.steps import prepare
    from airflow_provider_sft.core.sample_data import bundled_dataset_path

    processed = tmp_path / "runs" / "r" / "data"
    config = {
        "dataset_path": str(bundled_dataset_path()),
        "processed_dir": str(processed),
        "base_model": str(tiny_model),
        "max_seq_len": 512,
        "effective_batch_size": 8,
        "num_epochs": 1,
    }
    prepare(config, log=lambda line: None, env={})
    for path in [processed, *processed.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & stat.S_IWGRP and mode & stat.S_IRGRP, (path, oct(mode))
        if path.is_dir():
            assert mode & stat.S_ISGID, (path, oct(mode))

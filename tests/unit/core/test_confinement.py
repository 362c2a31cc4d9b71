"""Path confinement: no run name, model_dir or symlink reaches outside the directory the provider owns."""

from __future__ import annotations

import contextlib
import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.export import export_model
from airflow_provider_sft.core.files import owned_path, remove_owned
from airflow_provider_sft.core.run import check_run_name
from tests.unit.core.test_export import write_checkpoint

PIECES = st.sampled_from(["..", ".", "/", "a", "runs", "ä", "名", "-", "x" * 300, "link", " ", "\\", "~"])
NAMES = st.lists(PIECES, min_size=1, max_size=6).map("".join) | st.text(min_size=1, max_size=80)


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def tree(tmp_path):
    """outside/ (must survive), owner/ with a file, a run, and a symlink that points outside."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "precious.txt").write_text("keep")
    owner = tmp_path / "owner"
    (owner / "runs" / "a").mkdir(parents=True)
    (owner / "runs" / "a" / "f").write_text("x")
    os.symlink(tmp_path / "outside", owner / "runs" / "link")
    return tmp_path


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES)
def test_nothing_outside_the_owner_is_ever_removed(tree, name):
    owner = tree / "owner" / "runs"
    before = snapshot(tree / "outside")
    try:
        target = owned_path(name, owner, field="run_name")
    except (InvalidParameterError, ValueError, OSError):
        target = None
    else:
        assert owner.resolve() in target.parents  # strictly inside
    if target is not None:
        with contextlib.suppress(OSError):  # a name too long for the filesystem: refused by it
            remove_owned(name, owner, field="run_name")
    assert snapshot(tree / "outside") == before
    assert (tree / "outside" / "precious.txt").read_text() == "keep"


@settings(max_examples=300)
@given(name=NAMES)
def test_a_run_name_is_a_dns_label_or_refused(name):
    try:
        check_run_name(name)
    except InvalidParameterError as error:
        assert list(error.errors) == ["run_name"]
        return
    assert set(name) <= set(string.ascii_lowercase + string.digits + "-") and len(name) <= 48
    assert "/" not in name and ".." not in name


@pytest.mark.parametrize("path", ["", ".", "..", "../..", "/", "runs/../..", "link", "link/precious.txt"])
def test_the_owner_itself_and_escapes_are_refused_and_nothing_is_touched(tree, path):
    owner = tree / "owner" / "runs"
    before = snapshot(tree)
    with pytest.raises(InvalidParameterError) as info:
        remove_owned(path, owner, field="run_name")
    assert list(info.value.errors) == ["run_name"]
    assert snapshot(tree) == before


def test_an_owned_run_is_removed(tree):
    assert remove_owned("a", tree / "owner" / "runs", field="run_name")
    assert not (tree / "owner" / "runs" / "a").exists() and (tree / "outside" / "precious.txt").exists()


@pytest.mark.parametrize("where", ["workspace", "runs", "run", "checkpoint", "inside-checkpoint"])
def test_the_model_never_replaces_the_workspace_or_a_run(tmp_path, where):
    workspace = tmp_path / "ws"
    run = workspace / "runs" / "r1"
    checkpoint = run / "hf_format" / "samples_8"
    write_checkpoint(checkpoint)
    (workspace / "dataset").mkdir()
    target = {
        "workspace": workspace,
        "runs": workspace / "runs",
        "run": run,
        "checkpoint": checkpoint,
        "inside-checkpoint": checkpoint / "x",
    }[where]
    before = snapshot(tmp_path)
    with pytest.raises(InvalidParameterError) as info:
        export_model(run, target)
    assert list(info.value.errors) == ["model_dir"]
    assert snapshot(tmp_path) == before


def test_a_run_name_that_is_a_path_stops_before_anything(tmp_path):
    from airflow_provider_sft.core.params import SFTParams
    from airflow_provider_sft.core.run import TrainingRun

    with pytest.raises(InvalidParameterError) as info:
        TrainingRun("../..", SFTParams.parse({}), str(tmp_path / "d.jsonl"), str(tmp_path / "runs" / "../.."))
    assert list(info.value.errors) == ["run_name"]

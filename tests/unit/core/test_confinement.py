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
from airflow_provider_sft.core.files import owned_path, remove_owned
from airflow_provider_sft.core.results.export import export_model
from airflow_provider_sft.core.run import check_run_name
from tests.unit.core.results.test_export import write_checkpoint

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


# --- destructive targets: one helper, checked by the validate task and at the point of use -------


@pytest.fixture
def workspace_with_runs(tmp_path):
    """A workspace with this run (a checkpoint), a sibling run, and an unrelated directory, all with sentinels."""
    workspace = tmp_path / "ws"
    write_checkpoint(workspace / "runs" / "this-run" / "hf_format" / "samples_8")
    (workspace / "runs" / "other-run" / "final_model").mkdir(parents=True)
    (workspace / "runs" / "other-run" / "sentinel.txt").write_text("other run")
    (workspace / "runs" / "other-run" / "final_model" / "sentinel.txt").write_text("other model")
    (workspace / "sentinel.txt").write_text("workspace")
    (tmp_path / "unrelated").mkdir()
    (tmp_path / "unrelated" / "sentinel.txt").write_text("someone else's")
    return workspace


def targets(workspace: Path) -> dict[str, str]:
    return {
        "sibling-run": str(workspace / "runs" / "other-run"),
        "sibling-model": str(workspace / "runs" / "other-run" / "final_model"),
        "relative-sibling": "runs/other-run",
        "workspace": str(workspace),
        "runs": str(workspace / "runs"),
        "root": "/",
        "etc": "/etc",
        "inside-usr": "/usr/share/sft-model",
        "home-root": "/home",
        "unrelated": str(workspace.parent / "unrelated"),
    }


WHERE = ["sibling-run", "sibling-model", "relative-sibling", "workspace", "runs", "root", "etc"]
WHERE += ["inside-usr", "home-root", "unrelated"]


def sentinels_intact(workspace: Path) -> None:
    assert (workspace / "runs" / "other-run" / "sentinel.txt").read_text() == "other run"
    assert (workspace / "runs" / "other-run" / "final_model" / "sentinel.txt").read_text() == "other model"
    assert (workspace / "sentinel.txt").read_text() == "workspace"
    assert (workspace.parent / "unrelated" / "sentinel.txt").read_text() == "someone else's"


def validate_task(**fields):
    from airflow_provider_sft.operators.validate import ValidateRunOperator

    return ValidateRunOperator(task_id="validate", training={"resource_gpu_per_worker": 0}, **fields)


def airflow_context(params: dict) -> dict:
    from types import SimpleNamespace

    from airflow.sdk import DAG

    return {
        "dag": DAG(dag_id="sft_pipeline", params=params, schedule=None),
        "dag_run": SimpleNamespace(conf={}),
    }


@pytest.mark.parametrize("where", WHERE)
def test_the_validate_task_refuses_a_model_dir_that_is_not_its_own_and_touches_nothing(
    workspace_with_runs, where
):
    from airflow_provider_sft.operators.failures import FinalInvalidParameterError

    workspace = workspace_with_runs
    before = snapshot(workspace.parent)
    task = validate_task(workspace=str(workspace), model_dir=targets(workspace)[where])
    with pytest.raises(FinalInvalidParameterError) as info:
        task.execute(airflow_context({"workspace": str(workspace)}))
    assert list(info.value.errors) == ["model_dir"]
    assert "refused, nothing was touched" in str(info.value)
    assert snapshot(workspace.parent) == before
    sentinels_intact(workspace)


@pytest.mark.parametrize("where", WHERE)
def test_the_export_refuses_the_same_targets_at_the_point_of_use(workspace_with_runs, where):
    workspace = workspace_with_runs
    before = snapshot(workspace.parent)
    with pytest.raises(InvalidParameterError) as info:
        export_model(workspace / "runs" / "this-run", targets(workspace)[where])
    assert list(info.value.errors) == ["model_dir"]
    assert snapshot(workspace.parent) == before
    sentinels_intact(workspace)


@pytest.mark.parametrize("workspace", ["/", "/etc", "/usr/lib/x", "/home", "/root", "/var", "/proc/self"])
def test_the_validate_task_refuses_a_system_workspace(workspace):
    from airflow_provider_sft.operators.failures import FinalInvalidParameterError

    before = sorted(os.listdir("/"))
    with pytest.raises(FinalInvalidParameterError) as info:
        validate_task(workspace=workspace).execute(airflow_context({"workspace": workspace}))
    assert list(info.value.errors) == ["workspace"]
    assert sorted(os.listdir("/")) == before


def test_the_validate_task_accepts_a_model_dir_of_its_own(workspace_with_runs, tmp_path):
    (tmp_path / "empty").mkdir()
    for model_dir in ("models/sft", str(tmp_path / "new" / "model"), str(tmp_path / "empty")):
        task = validate_task(workspace=str(workspace_with_runs), model_dir=model_dir)
        task.execute(airflow_context({"workspace": str(workspace_with_runs)}))


def test_a_directory_the_provider_exported_is_replaced_and_another_is_not(workspace_with_runs, tmp_path):
    run = workspace_with_runs / "runs" / "this-run"
    export_model(run, tmp_path / "served")  # new: created, with its marker
    export_model(run, tmp_path / "served")  # ours (sft_manifest.json): replaced
    assert (tmp_path / "served" / "sft_manifest.json").is_file()
    (tmp_path / "served" / "sft_manifest.json").unlink()  # no longer recognisably ours
    with pytest.raises(InvalidParameterError, match="did not create"):
        export_model(run, tmp_path / "served")
    assert (tmp_path / "served" / "model.safetensors").is_file()


def test_in_cluster_mode_the_validate_task_checks_the_pvc_paths_not_this_machine(tmp_path):
    from airflow_provider_sft.operators.failures import FinalInvalidParameterError

    fields = dict(backend="kubernetes", kubernetes={"pvc_name": "ws"}, workspace=str(tmp_path))
    validate_task(**fields, model_dir="/workspace/models/m").execute(airflow_context({}))
    with pytest.raises(FinalInvalidParameterError) as info:
        validate_task(**fields, model_dir="/workspace/runs/other/final_model").execute(airflow_context({}))
    assert "another run's directory /workspace/runs/other" in info.value.errors["model_dir"]
    with pytest.raises(FinalInvalidParameterError) as info:
        validate_task(**fields, pvc_mount_path="/").execute(airflow_context({}))
    assert list(info.value.errors) == ["pvc_mount_path"]


@pytest.mark.parametrize("owner", ["/", "/usr"])
def test_nothing_in_a_system_directory_is_removed_whatever_its_owner(owner):
    with pytest.raises(InvalidParameterError, match="run_name"):
        remove_owned("etc" if owner == "/" else "lib", owner, field="run_name")
    assert Path("/etc/passwd").exists() and Path("/usr/lib").is_dir()


def test_an_exported_model_is_readable_by_another_uid(workspace_with_runs, tmp_path):
    run = workspace_with_runs / "runs" / "this-run"
    weights = run / "hf_format" / "samples_8" / "model.safetensors"
    weights.chmod(0o600)  # as a trainer under a restrictive umask writes it
    model = Path(export_model(run, tmp_path / "model").model_path)
    for path in [model, *model.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode & 0o044 == 0o044, f"{path.name} is {oct(mode)}"
        if path.is_dir():
            assert mode & 0o011 == 0o011, f"{path.name} is {oct(mode)}"


def _write_many(path: str, byte: bytes, rounds: int) -> None:
    from airflow_provider_sft.core.files import atomic_write_bytes

    for _ in range(rounds):
        atomic_write_bytes(path, byte * (1 << 20))


def test_two_concurrent_atomic_writes_never_leave_a_half_file(tmp_path):
    import multiprocessing

    target = tmp_path / "latest.json"
    writers = [
        multiprocessing.get_context("spawn").Process(target=_write_many, args=(str(target), b, 60))
        for b in (b"A", b"B")
    ]
    for writer in writers:
        writer.start()
    seen = set()
    while any(w.is_alive() for w in writers):
        with contextlib.suppress(FileNotFoundError):
            data = target.read_bytes()
            seen.add((data[:1], len(data), data.count(data[:1])))
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0  # a writer whose temporary was renamed away by the other fails
    data = target.read_bytes()
    seen.add((data[:1], len(data), data.count(data[:1])))
    assert all(length == count == 1 << 20 for _, length, count in seen), seen
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json"]  # no temporary left behind

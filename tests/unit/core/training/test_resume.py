"""What a new attempt starts from: the newest complete state of the same run, or a clean start that says why."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.results.metrics import read_step_records, summarize_file
from airflow_provider_sft.core.run import TrainingRun
from airflow_provider_sft.core.training.progress import MetricsFollower
from airflow_provider_sft.core.training.resume import (
    IDENTITY_FILE,
    METADATA_FILE,
    decide,
    run_identity,
    state_problem,
)


@pytest.fixture
def inputs(tmp_path):
    """A local base model (files only: the identity never opens them) and a dataset."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "config.json").write_text("{}")
    dataset = tmp_path / "train.jsonl"
    dataset.write_text('{"messages": []}\n')
    return model, dataset


def identity(inputs, tmp_path, *, nodes=1, **values):
    model, dataset = inputs
    params = SFTParams.parse({"base_model": str(model), "resource_gpu_per_worker": 0, **values})
    return run_identity(
        params, processed_dir=tmp_path / "data", dataset_path=dataset, num_nodes=nodes, processes_per_node=1
    )


def save_state(out: Path, epoch: int, *, step: int | None, samples: int, pickled: bool = False) -> Path:
    """A state as the CPU loop (JSON metadata) or instructlab (a torch pickle) writes it, metadata last."""
    state = out / c.FULL_STATE_DIR / f"epoch_{epoch}"
    (state / "model").mkdir(parents=True)
    (state / "model" / "model.safetensors").write_bytes(b"w" * 64)
    (state / "optimizer.bin").write_bytes(b"o" * 64)
    metadata = {"current_epoch": epoch, "samples_seen": samples, **({"global_step": step} if step else {})}
    if pickled:
        torch.save(metadata, state / METADATA_FILE)
    else:
        (state / METADATA_FILE).write_bytes(jsonio.dumps(metadata))
    return state


def metrics(out: Path, steps: int, *, per_step: int = 32, torn: bool = False) -> None:
    lines = [{"hparams": True, "learning_rate": 1e-3}]
    lines += [
        {"epoch": (s - 1) // 4, "step": s, "avg_loss": 5.0 - s / 10, "samples_seen": s * per_step}
        for s in range(1, steps + 1)
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (out / c.METRICS_FILE).write_text(text + ('{"epoch": 1, "step": 9, "avg_lo' if torn else ""))


def first_attempt(out: Path, ident: dict, *, started: float = 1.0) -> None:
    """Attempt "a1" started the run (it records the identity) and later saved its states."""
    decide(out, ident, resume="auto", attempt="a1", now=started)


# --- identity --------------------------------------------------------------------------------------


def test_the_newest_complete_state_of_the_same_run_is_resumed_and_the_line_says_from_where(inputs, tmp_path):
    out = tmp_path / "run"
    ident = identity(inputs, tmp_path)
    first_attempt(out, ident)
    save_state(out, 0, step=None, samples=128)  # the epoch-end state
    save_state(out, 1, step=6, samples=192)  # saved on SIGTERM mid-epoch 1
    metrics(out, 8)
    decision = decide(out, ident, resume="auto", attempt="a2")
    assert decision.state is not None and decision.state.path.name == "epoch_1"
    assert decision.line == (
        "resuming from full_state/epoch_1: epoch 1 at step 6, 192 samples seen, saved by attempt a1"
    )
    attempts = jsonio.loads((out / IDENTITY_FILE).read_bytes())["attempts"]
    assert [a["attempt"] for a in attempts] == ["a1", "a2"]


@pytest.mark.parametrize(
    ("change", "differs"),
    [
        pytest.param({"learning_rate": 1e-4}, "learning_rate", id="params"),
        pytest.param({"seed": 7, "num_epochs": 3}, "num_epochs, seed", id="two-params"),
        pytest.param({"nodes": 2}, "num_nodes", id="nodes"),
        # the held-out samples are not trained on: another training set
        pytest.param({"validation_split": 0.1, "validation_frequency": 5}, "validation_split", id="held-out"),
    ],
)
def test_a_state_of_other_settings_is_removed_naming_the_fields_never_their_values(
    inputs, tmp_path, change, differs
):
    out = tmp_path / "run"
    first_attempt(out, identity(inputs, tmp_path, learning_rate=5e-6))
    save_state(out, 0, step=3, samples=96)
    values = {"learning_rate": 5e-6, **change}
    decision = decide(out, identity(inputs, tmp_path, **values), resume="auto", attempt="a2")
    assert decision.state is None
    assert decision.line.startswith(
        f"starting clean: the saved state is of another run: {differs} differ; removed full_state"
    )
    assert "0.0001" not in decision.line and "1e-04" not in decision.line
    assert not (out / c.FULL_STATE_DIR).exists()


def test_how_often_the_validation_loss_is_computed_is_the_same_run(inputs, tmp_path):
    """validation_frequency changes no training step (test_validation_loss.py): a retry may change it."""
    held_out = {"validation_split": 0.1}
    assert identity(inputs, tmp_path, **held_out, validation_frequency=5) == identity(
        inputs, tmp_path, **held_out, validation_frequency=50
    )


def test_changed_model_weights_data_or_code_are_another_run(inputs, tmp_path, monkeypatch):
    model, dataset = inputs
    before = identity(inputs, tmp_path)
    weights = model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000))  # rewritten
    assert [k for k in before if before[k] != identity(inputs, tmp_path)[k]] == ["base_model_weights"]

    before = identity(inputs, tmp_path)
    dataset.write_text('{"messages": [1]}\n')
    assert [k for k in before if before[k] != identity(inputs, tmp_path)[k]] == ["data"]
    prepared = tmp_path / "data" / "prepared.json"  # the prepared data's fingerprint wins over the raw file
    prepared.parent.mkdir()
    prepared.write_text(json.dumps({"fingerprint": {"dataset_sha256": "x", "max_seq_len": 512}}))
    with_prepared = identity(inputs, tmp_path)
    prepared.write_text(json.dumps({"fingerprint": {"dataset_sha256": "x", "max_seq_len": 1024}}))
    assert identity(inputs, tmp_path)["data"] != with_prepared["data"]

    import airflow_provider_sft

    before = identity(inputs, tmp_path)
    monkeypatch.setattr(airflow_provider_sft, "__version__", "9.9.9")
    assert [k for k in before if before[k] != identity(inputs, tmp_path)[k]] == ["airflow_provider_sft"]


def test_a_state_without_the_runs_identity_is_foreign_and_removed(inputs, tmp_path):
    out = tmp_path / "run"
    save_state(out, 0, step=3, samples=96)  # copied in, or left by a version before resume existed
    metrics(out, 3)
    decision = decide(out, identity(inputs, tmp_path), resume="auto", attempt="a2")
    assert decision.state is None
    assert decision.line == (
        f"starting clean: the saved state has no readable {IDENTITY_FILE}: foreign, never resumed; "
        "removed full_state, training_params_and_metrics_global0.jsonl"
    )
    assert not (out / c.METRICS_FILE).exists()


def test_never_starts_clean_whatever_is_there(inputs, tmp_path):
    out = tmp_path / "run"
    ident = identity(inputs, tmp_path)
    first_attempt(out, ident)
    save_state(out, 0, step=3, samples=96)
    (out / c.HF_FORMAT_DIR / "samples_64").mkdir(parents=True)
    decision = decide(out, ident, resume="never", attempt="a2")
    assert decision.state is None
    assert (
        decision.line == 'starting clean: resume="never"; removed full_state, full_state.run.json, hf_format'
    )
    assert jsonio.loads((out / IDENTITY_FILE).read_bytes())["attempts"][0]["attempt"] == "a2"


def test_nothing_saved_yet_is_a_clean_start(inputs, tmp_path):
    decision = decide(tmp_path / "run", identity(inputs, tmp_path), resume="auto", attempt="a1")
    assert decision.line == "starting clean: no saved state of an earlier attempt"
    assert (tmp_path / "run" / IDENTITY_FILE).is_file()  # written before the first step


# --- completeness ----------------------------------------------------------------------------------


def test_a_state_whose_shard_is_newer_than_its_metadata_is_incomplete(tmp_path):
    state = save_state(tmp_path, 1, step=6, samples=192)
    assert state_problem(state) is None
    shard = state / "model" / "model.safetensors"
    metadata_time = (state / METADATA_FILE).stat().st_mtime_ns
    with shard.open("r+b") as handle:  # an on-demand save rewriting epoch_1 in place, killed after this file
        handle.truncate(10)
    os.utime(shard, ns=(metadata_time + 1000, metadata_time + 1000))
    assert (
        state_problem(state) == f"model/model.safetensors is newer than its {METADATA_FILE} (written in part)"
    )


def test_instructlabs_pickled_metadata_is_read_and_a_torn_one_is_refused(tmp_path):
    state = save_state(tmp_path, 0, step=2, samples=64, pickled=True)
    assert state_problem(state) is None
    data = (state / METADATA_FILE).read_bytes()
    (state / METADATA_FILE).write_bytes(data[: len(data) // 2])
    assert state_problem(state).startswith(f"its {METADATA_FILE} cannot be read")
    (state / METADATA_FILE).unlink()
    assert state_problem(state) == f"it has no {METADATA_FILE} (written last)"


def test_an_incomplete_newest_state_is_removed_and_the_complete_one_before_it_resumed(inputs, tmp_path):
    out = tmp_path / "run"
    ident = identity(inputs, tmp_path)
    first_attempt(out, ident)
    save_state(out, 0, step=None, samples=128)
    partial = save_state(out, 1, step=6, samples=192)
    (partial / METADATA_FILE).unlink()  # killed before instructlab wrote it
    (out / c.FULL_STATE_DIR / ".epoch_2.tmp").mkdir()  # the CPU loop's temporary, killed mid-save
    decision = decide(out, ident, resume="auto", attempt="a2")
    assert decision.state is not None and decision.state.path.name == "epoch_0"
    assert decision.line == (
        "resuming from full_state/epoch_0: epoch 0 at its end, 128 samples seen, saved by attempt a1; "
        f"removed .epoch_2.tmp (not an epoch_<N> state); epoch_1 (it has no {METADATA_FILE} (written last))"
    )
    assert sorted(p.name for p in (out / c.FULL_STATE_DIR).iterdir()) == ["epoch_0"]  # what instructlab loads


def test_only_incomplete_states_is_a_clean_start_with_the_reason(inputs, tmp_path):
    out = tmp_path / "run"
    ident = identity(inputs, tmp_path)
    first_attempt(out, ident)
    state = save_state(out, 0, step=3, samples=96)
    (state / METADATA_FILE).write_text('{"current_epoch": 0, "samp')
    decision = decide(out, ident, resume="auto", attempt="a2")
    assert decision.state is None
    assert decision.line.startswith(
        f"starting clean: no complete saved state: epoch_0 (its {METADATA_FILE} cannot be read (UnpicklingError))"
    )


# --- the metrics JSONL ---------------------------------------------------------------------------


def test_resume_drops_the_steps_after_the_state_and_marks_where_it_took_over(inputs, tmp_path):
    out = tmp_path / "run"
    ident = identity(inputs, tmp_path)
    first_attempt(out, ident)
    save_state(out, 1, step=5, samples=160)
    metrics(out, 8, torn=True)  # steps 6-8 were trained after the state, then a torn line
    (out / c.HF_FORMAT_DIR / "samples_128").mkdir(parents=True)
    (out / c.HF_FORMAT_DIR / "samples_224").mkdir(parents=True)  # after the state: written again later
    decide(out, ident, resume="auto", attempt="a2")
    lines = [json.loads(line) for line in (out / c.METRICS_FILE).read_text().splitlines()]
    assert lines[0]["hparams"] and [line.get("step") for line in lines[1:]] == [1, 2, 3, 4, 5, 5]
    assert lines[-1] == {
        "resumed": True,
        "step": 5,
        "samples_seen": 160,
        "epoch": 1,
        "state": "epoch_1",
        "attempt": "a1",
    }
    assert sorted(p.name for p in (out / c.HF_FORMAT_DIR).iterdir()) == ["samples_128"]

    # the readers skip the marker: the summary, the chart's records and the progress lines
    records, skipped = read_step_records(out / c.METRICS_FILE)
    assert [r.step for r in records] == [1, 2, 3, 4, 5] and skipped == 0
    assert summarize_file(out / c.METRICS_FILE).samples_seen == 160
    shown: list[str] = []
    MetricsFollower(out / c.METRICS_FILE, num_epochs=2, effective_batch_size=32, log=shown.append).poll()
    assert shown == [
        "step 1 epoch 1/2 loss 4.9000 lr ?"
    ]  # its progress steps (no total: 1, 10, ...), no marker


def test_an_epoch_end_state_keeps_the_steps_of_its_epoch(inputs, tmp_path):
    out = tmp_path / "run"
    ident = identity(inputs, tmp_path)
    first_attempt(out, ident)
    save_state(out, 0, step=None, samples=128)  # epochs of 4 steps: steps 1-4
    metrics(out, 7)
    decide(out, ident, resume="auto", attempt="a2")
    lines = [json.loads(line) for line in (out / c.METRICS_FILE).read_text().splitlines()]
    assert [line.get("step") for line in lines[1:]] == [1, 2, 3, 4, 4]
    assert lines[-1]["resumed"] and lines[-1]["epoch"] == 0


# --- the parameter --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["always", "", None, True])
def test_resume_is_auto_or_never_and_a_bad_value_names_the_field(value):
    with pytest.raises(InvalidParameterError, match="resume: must be one of 'auto', 'never'"):
        TrainingRun("run", SFTParams.parse({}), "d.jsonl", "/ws/runs/run", resume=value)


def test_resume_round_trips_through_the_run_config_and_defaults_to_auto():
    run = TrainingRun("run", SFTParams.parse({}), "d.jsonl", "/ws/runs/run")
    assert run.resume == "auto"
    data = {**run.to_json_dict(), "resume": "never"}
    assert TrainingRun.from_json_dict(data).resume == "never"
    del data["resume"]  # a config written before the field existed
    assert TrainingRun.from_json_dict(data).resume == "auto"


def test_a_hub_model_is_known_by_the_revision_its_cache_resolved(tmp_path):
    from airflow_provider_sft.core.training.resume import model_fingerprint

    env = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    ref = tmp_path / "hub" / "models--org--model" / "refs" / "main"
    assert model_fingerprint("org/model", env) == "revision:unknown"
    ref.parent.mkdir(parents=True)
    ref.write_text("abc123")
    assert model_fingerprint("org/model", env) == "revision:abc123"
    ref.write_text("def456")  # the model was updated on the Hub and fetched again
    assert model_fingerprint("org/model", env) == "revision:def456"

"""Choosing the final checkpoint and publishing it atomically."""

from __future__ import annotations

import json
import os

import pytest

from airflow_provider_sft.core.errors import ExportError
from airflow_provider_sft.core.results import export as export_module
from airflow_provider_sft.core.results.export import (
    checkpoint_problem,
    export_model,
    select_final_checkpoint,
    verify_manifest,
)


def write_checkpoint(directory, payload=b"weights", *, complete=True):
    """A minimal HF checkpoint: config.json + a real safetensors file (optionally truncated)."""
    import numpy as np
    from safetensors.numpy import save_file

    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (directory / "tokenizer.json").write_text("{}")
    save_file(
        {"w": np.frombuffer(payload.ljust(64, b"\0"), dtype=np.uint8).copy()},
        str(directory / "model.safetensors"),
    )
    if not complete:
        data = (directory / "model.safetensors").read_bytes()
        (directory / "model.safetensors").write_bytes(data[:-10])
    return directory


def test_newest_numbered_checkpoint_wins_not_the_newest_mtime(tmp_path):
    run = tmp_path / "run"
    newest = write_checkpoint(run / "hf_format" / "samples_1000")
    older = write_checkpoint(run / "hf_format" / "samples_200")
    os.utime(older, (2_000_000_000, 2_000_000_000))  # touched later, still older by samples
    write_checkpoint(run / "hf_format" / "samples_90")
    assert select_final_checkpoint(run) == newest


def test_last_epoch_wins(tmp_path):
    run = tmp_path / "run"
    write_checkpoint(run / "hf_format" / "samples_1000")
    last = write_checkpoint(run / "hf_format" / "last_epoch")
    assert select_final_checkpoint(run) == last


def test_half_written_and_temporary_checkpoints_are_never_chosen(tmp_path):
    run = tmp_path / "run"
    good = write_checkpoint(run / "hf_format" / "samples_100")
    write_checkpoint(run / "hf_format" / "samples_200", complete=False)
    write_checkpoint(run / "hf_format" / ".samples_300.tmp")
    (run / "hf_format" / "samples_400").mkdir()  # no files yet
    assert checkpoint_problem(run / "hf_format" / "samples_200") == "model.safetensors is incomplete"
    assert select_final_checkpoint(run) == good


def test_no_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="No complete checkpoint"):
        select_final_checkpoint(tmp_path)
    write_checkpoint(tmp_path / "hf_format" / "samples_5", complete=False)
    with pytest.raises(ExportError, match=r"samples_5: model\.safetensors is incomplete"):
        select_final_checkpoint(tmp_path)


def test_export_links_files_and_writes_a_verifiable_manifest(tmp_path):
    source = write_checkpoint(tmp_path / "run" / "hf_format" / "samples_8")
    result = export_model(tmp_path / "run", tmp_path / "final_model")
    final = tmp_path / "final_model"
    assert result.files == 3 and result.linked
    assert os.path.samefile(final / "model.safetensors", source / "model.safetensors")
    assert verify_manifest(final) == []
    (final / "tokenizer.json").unlink()
    (final / "tokenizer.json").write_text("changed")
    assert verify_manifest(final) == ["tokenizer.json"]


def test_export_copies_when_hard_links_are_impossible(tmp_path, monkeypatch):
    write_checkpoint(tmp_path / "run" / "hf_format" / "samples_8")

    def no_links(*_args):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(export_module.os, "link", no_links)
    result = export_model(tmp_path / "run", tmp_path / "final_model")
    assert not result.linked
    assert verify_manifest(tmp_path / "final_model") == []


def test_crash_mid_copy_leaves_no_final_model(tmp_path, monkeypatch):
    write_checkpoint(tmp_path / "run" / "hf_format" / "samples_8")
    real_link = os.link
    calls = []

    def crash_on_second_file(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-copy")
        return real_link(src, dst)

    monkeypatch.setattr(export_module.os, "link", crash_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        export_model(tmp_path / "run", tmp_path / "final_model")
    assert not (tmp_path / "final_model").exists()
    assert os.listdir(tmp_path) == ["run"]  # no staging directory left either


def test_crash_keeps_the_previous_final_model_intact(tmp_path, monkeypatch):
    write_checkpoint(tmp_path / "old" / "hf_format" / "samples_1", payload=b"old")
    export_model(tmp_path / "old", tmp_path / "final_model")
    write_checkpoint(tmp_path / "new" / "hf_format" / "samples_2", payload=b"new")
    monkeypatch.setattr(
        export_module, "sha256_file", lambda _path: (_ for _ in ()).throw(OSError(28, "No space"))
    )
    with pytest.raises(ExportError, match="No space"):
        export_model(tmp_path / "new", tmp_path / "final_model")
    manifest = json.loads((tmp_path / "final_model" / "sft_manifest.json").read_text())
    assert manifest["source_checkpoint"].endswith("old/hf_format/samples_1")
    assert sorted(os.listdir(tmp_path)) == ["final_model", "new", "old"]


def test_leftovers_of_a_killed_export_are_cleaned_and_replaced(tmp_path):
    write_checkpoint(tmp_path / "run" / "hf_format" / "samples_8")
    stale = tmp_path / ".final_model.tmp-deadbeef"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    export_model(tmp_path / "run", tmp_path / "final_model")
    assert not stale.exists()
    export_model(tmp_path / "run", tmp_path / "final_model")  # re-export replaces atomically
    assert sorted(os.listdir(tmp_path)) == ["final_model", "run"]


def test_a_run_without_its_metrics_file_publishes_nothing(tmp_path):
    """The export step checks the metrics before the model: no final_model, no latest.json."""
    from airflow_provider_sft.core import constants as c
    from airflow_provider_sft.core.pod.steps import export

    run = tmp_path / "runs" / "r1"
    write_checkpoint(run / "hf_format" / "samples_100")
    config = {
        "run_dir": str(run),
        "model_dir": str(run / "final_model"),
        "metrics_path": str(run / "metrics.json"),
        "latest_path": str(tmp_path / "latest.json"),
        "prune": True,
    }
    with pytest.raises(ExportError, match=f"metrics file {run / c.METRICS_FILE} does not exist"):
        export(config, log=lambda _line: None)
    assert not (run / "final_model").exists() and not (tmp_path / "latest.json").exists()
    assert (run / "hf_format" / "samples_100").is_dir()  # nothing pruned either

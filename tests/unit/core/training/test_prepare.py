"""The prepare step's output and its fingerprint: byte for byte what instructlab-training's
``process_data`` writes, each input that changes it named, only the base model's tokenizer read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.errors import DatasetError
from airflow_provider_sft.core.sample_data import bundled_dataset_path
from airflow_provider_sft.core.training import prepare as prep
from airflow_provider_sft.core.training.prepare import (
    PREPARED_FILE,
    TOKENIZER_DIR,
    differences,
    fingerprint,
    prepare_data,
    reusable,
    tokenizer_files,
)
from tests.unit.core.training.sized_samples import sized_sample

MAX_SEQ_LEN = 64  # under some of the bundled samples: those are dropped as too long


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_model) -> Path:
    """The bundled samples and a few too short to keep: both of instructlab's filters drop some."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    path = tmp_path_factory.mktemp("dataset") / "train.jsonl"
    short = "".join(json.dumps(sized_sample(tokenizer, n)) + "\n" for n in (12, 19))
    path.write_text(bundled_dataset_path().read_text() + short)
    return path


def prepare(
    dataset: Path, processed_dir: Path, model: Path, *, max_seq_len: int = MAX_SEQ_LEN, procs: int = 1
):
    return prepare_data(
        dataset,
        processed_dir,
        base_model=str(model),
        max_seq_len=max_seq_len,
        effective_batch_size=8,
        num_epochs=1,
        num_cpu_procs=procs,
        env={},
    )


def is_reusable(dataset: Path, processed_dir: Path, model: Path, *, max_seq_len: int = MAX_SEQ_LEN):
    return reusable(dataset, processed_dir, base_model=str(model), max_seq_len=max_seq_len, env={})


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory, dataset, tiny_model) -> Path:
    processed = tmp_path_factory.mktemp("prepared") / "data"
    prepare(dataset, processed, tiny_model)
    return processed


@pytest.fixture
def model_copy(tiny_model, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


# --- the output is instructlab's ----------------------------------------------------------------


@pytest.mark.parametrize("procs", [1, 2])
def test_the_output_is_byte_for_byte_what_instructlab_writes(dataset, tiny_model, tmp_path, procs):
    from instructlab.training.data_process import process_data

    prepared = prepare(dataset, tmp_path / "ours", tiny_model, procs=procs)
    process_data(str(dataset), str(tmp_path / "theirs"), MAX_SEQ_LEN, str(tiny_model), procs)

    report = prepared.report
    assert report.dropped_too_short == 2 and report.dropped_too_long > 0 and report.kept_samples > 0
    ours = (tmp_path / "ours" / c.PROCESSED_DATA_FILE).read_bytes()
    assert ours == (tmp_path / "theirs" / c.PROCESSED_DATA_FILE).read_bytes()
    assert len(ours.splitlines()) == report.kept_samples


def test_prepared_json_records_the_fingerprint_and_the_report(prepared_dir, dataset, tiny_model):
    recorded = json.loads((prepared_dir / PREPARED_FILE).read_text())
    files = tokenizer_files(Path(tiny_model))
    assert recorded["fingerprint"] == fingerprint(dataset, files, MAX_SEQ_LEN)
    assert recorded["fingerprint_id"] == prep.fingerprint_id(recorded["fingerprint"])
    assert recorded["report"]["input_samples"] == 237 and recorded["report"]["dropped_too_short"] == 2
    assert not list(prepared_dir.glob(".processing-*"))  # the scratch directory is gone


# --- what the fingerprint holds, and the words for each difference -----------------------------


def rewrite(path: Path, change) -> None:
    path.write_text(change(path.read_text()))


def template_in_config_only(model: Path) -> None:
    """An older model layout: the chat template inside tokenizer_config.json, no chat_template.jinja."""
    template = (model / "chat_template.jinja").read_text()
    (model / "chat_template.jinja").unlink()
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))


CHANGES = {
    "tokenizer": (
        lambda model: rewrite(
            model / "tokenizer.json", lambda text: text.replace('"<|im_end|>"', '"<|end|>"')
        ),
        ["tokenizer files differ: tokenizer.json"],
    ),
    "chat template file": (
        lambda model: rewrite(model / "chat_template.jinja", lambda text: text.replace("\n", "\n\n")),
        ["the chat template changed", "tokenizer files differ: chat_template.jinja"],
    ),
    "added tokenizer file": (
        lambda model: (model / "special_tokens_map.json").write_text("{}"),
        ["tokenizer files differ: special_tokens_map.json"],
    ),
    "weights": (lambda model: (model / "model.safetensors").write_bytes(b"other weights"), []),
}


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_each_changed_tokenizer_part_is_named(model_copy, dataset, change):
    before = fingerprint(dataset, tokenizer_files(model_copy), MAX_SEQ_LEN)
    edit, expected = CHANGES[change]
    edit(model_copy)
    after = fingerprint(dataset, tokenizer_files(model_copy), MAX_SEQ_LEN)
    assert differences(before, after) == expected


def test_a_chat_template_in_the_tokenizer_config_is_fingerprinted_on_its_own(model_copy, dataset):
    template_in_config_only(model_copy)
    before = fingerprint(dataset, tokenizer_files(model_copy), MAX_SEQ_LEN)
    assert before["chat_template_sha256"]
    config = json.loads((model_copy / "tokenizer_config.json").read_text())
    config["chat_template"] = config["chat_template"].replace("\n", "\n\n")
    (model_copy / "tokenizer_config.json").write_text(json.dumps(config))
    after = fingerprint(dataset, tokenizer_files(model_copy), MAX_SEQ_LEN)
    assert differences(before, after) == [
        "the chat template changed",
        "tokenizer files differ: tokenizer_config.json",
    ]


def test_the_dataset_max_seq_len_and_instructlab_version_are_named(
    tiny_model, dataset, tmp_path, monkeypatch
):
    files = tokenizer_files(Path(tiny_model))
    before = fingerprint(dataset, files, MAX_SEQ_LEN)
    assert differences(before, fingerprint(dataset, files, MAX_SEQ_LEN)) == []

    other = tmp_path / "other.jsonl"
    other.write_bytes(dataset.read_bytes() + b"\n")  # one byte more
    assert differences(before, fingerprint(other, files, MAX_SEQ_LEN)) == ["the dataset changed (sha256)"]
    assert differences(before, fingerprint(dataset, files, 128)) == [f"max_seq_len {MAX_SEQ_LEN} -> 128"]
    monkeypatch.setattr(prep, "instructlab_version", lambda: "99.0")
    assert differences(before, fingerprint(dataset, files, MAX_SEQ_LEN)) == [
        f"instructlab-training {before['instructlab_training']} prepared it, this is 99.0"
    ]


def test_the_installed_instructlab_version_is_recorded():
    from importlib.metadata import version

    assert prep.instructlab_version() == version("instructlab-training")


# --- reuse --------------------------------------------------------------------------------------


def test_matching_inputs_reuse_the_prepared_data_where_this_process_sees_it(
    prepared_dir, dataset, tiny_model, tmp_path
):
    recorded = json.loads((prepared_dir / PREPARED_FILE).read_text())
    moved = Path(shutil.copytree(prepared_dir, tmp_path / "mounted-elsewhere"))  # another mount path
    found, why = is_reusable(dataset, moved, tiny_model)
    assert found is not None and why == ""
    assert found.processed_dir == str(moved)
    assert found.report.processed_path == str(moved / c.PROCESSED_DATA_FILE)
    assert found.to_dict()["fingerprint_id"] == recorded["fingerprint_id"]
    assert {**found.report.to_dict(), "processed_path": ""} == {**recorded["report"], "processed_path": ""}


def test_no_prepared_json_is_no_reuse(dataset, tiny_model, tmp_path):
    (tmp_path / "data").mkdir()
    assert is_reusable(dataset, tmp_path / "data", tiny_model) == (
        None,
        "no data was prepared before the job",
    )


def test_a_missing_data_file_is_no_reuse(prepared_dir, dataset, tiny_model, tmp_path):
    copy = Path(shutil.copytree(prepared_dir, tmp_path / "data"))
    (copy / c.PROCESSED_DATA_FILE).unlink()
    assert is_reusable(dataset, copy, tiny_model) == (None, f"{copy / c.PROCESSED_DATA_FILE} is missing")


def test_an_unreadable_prepared_json_is_no_reuse(prepared_dir, dataset, tiny_model, tmp_path):
    copy = Path(shutil.copytree(prepared_dir, tmp_path / "data"))
    (copy / PREPARED_FILE).write_text('{"fingerprint": ')  # cut short
    found, why = is_reusable(dataset, copy, tiny_model)
    assert found is None and why.startswith(f"{copy / PREPARED_FILE} cannot be read")


def test_other_inputs_are_no_reuse_and_say_why(prepared_dir, dataset, model_copy, tmp_path):
    assert is_reusable(dataset, prepared_dir, model_copy, max_seq_len=65) == (
        None,
        f"max_seq_len {MAX_SEQ_LEN} -> 65",
    )
    other = tmp_path / "other.jsonl"
    other.write_bytes(dataset.read_bytes().replace(b"Helsinki", b"Turku"))
    rewrite(model_copy / "chat_template.jinja", lambda text: text + " ")
    assert is_reusable(other, prepared_dir, model_copy) == (
        None,
        "the dataset changed (sha256); the chat template changed; tokenizer files differ: chat_template.jinja",
    )


def test_a_failed_prepare_leaves_nothing_to_reuse(prepared_dir, dataset, tiny_model, tmp_path):
    """prepared.json goes before the data is replaced: it never describes another data.jsonl."""
    copy = Path(shutil.copytree(prepared_dir, tmp_path / "data"))
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match="is empty"):
        prepare(empty, copy, tiny_model)
    assert is_reusable(dataset, copy, tiny_model) == (None, "no data was prepared before the job")


# --- only the tokenizer is read from the base model ---------------------------------------------


def test_only_the_tokenizer_files_of_the_base_model_are_read(model_copy, dataset, prepared_dir, tmp_path):
    (model_copy / "model.safetensors").unlink()
    (model_copy / "model.safetensors").mkdir()  # readable by nobody as a file, root included
    prepared = prepare(dataset, tmp_path / "data", model_copy)

    staged = sorted(p.name for p in (tmp_path / "data" / TOKENIZER_DIR).iterdir())
    assert staged == ["chat_template.jinja", "config.json", "tokenizer.json", "tokenizer_config.json"]
    assert sorted(prepared.fingerprint["tokenizer_files"]) == staged
    assert (tmp_path / "data" / c.PROCESSED_DATA_FILE).read_bytes() == (
        prepared_dir / c.PROCESSED_DATA_FILE
    ).read_bytes()  # the same data as with the weights there


def test_a_hub_model_fetches_only_its_tokenizer_files(monkeypatch, tiny_model):
    asked = {}

    def snapshot_download(repo_id, *, allow_patterns, token):
        asked.update(repo_id=repo_id, allow_patterns=allow_patterns, token=token)
        return str(tiny_model)

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    assert prep.tokenizer_source("org/model", {"HF_TOKEN": "hf_x"}) == Path(tiny_model)
    assert asked["repo_id"] == "org/model" and asked["token"] == "hf_x"
    assert set(asked["allow_patterns"]) == set(prep.TOKENIZER_FILES)
    assert not any(name.endswith((".safetensors", ".bin", ".pt")) for name in asked["allow_patterns"])


def test_a_missing_local_model_or_tokenizer_is_named(tmp_path):
    with pytest.raises(DatasetError, match=f"base_model {tmp_path}/none does not exist"):
        prep.tokenizer_source(str(tmp_path / "none"), {})
    (tmp_path / "weights-only").mkdir()
    with pytest.raises(DatasetError, match="has no tokenizer"):
        tokenizer_files(tmp_path / "weights-only")

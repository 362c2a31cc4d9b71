"""A directory ``datasets.save_to_disk()`` wrote is a dataset source: its Arrow shards, its split.

The directories are written by the real ``datasets`` library; the records take the same path
as every other format (same output, same errors naming the file and row).
"""

from __future__ import annotations

import json

import pytest

from airflow_provider_sft.core.dataset import DatasetOptions, resolve_dataset
from airflow_provider_sft.core.errors import DatasetError
from tests.dataset_files import ROWS, assert_nothing_written, chat, read_output, write_parquet

datasets = pytest.importorskip("datasets")

OTHER = [chat((f"test question {i}", f"test answer {i}")) for i in range(3)]


def saved(path, rows, **kwargs):
    datasets.Dataset.from_list(rows).save_to_disk(str(path), **kwargs)
    return path


def saved_dict(path, **splits):
    datasets.DatasetDict(
        {name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}
    ).save_to_disk(str(path))
    return path


def test_a_saved_dataset_gives_what_the_same_table_as_parquet_gives(tmp_path):
    source = saved(tmp_path / "saved", ROWS, num_shards=2)  # two shards, read in their order
    stats = resolve_dataset(str(source), tmp_path / "ws")
    assert read_output(tmp_path / "ws") == ROWS
    assert stats.records == len(ROWS) and stats.files == 2
    resolve_dataset(str(write_parquet(tmp_path / "d.parquet", ROWS)), tmp_path / "ws-parquet")
    assert (tmp_path / "ws" / "dataset" / "train.jsonl").read_bytes() == (
        tmp_path / "ws-parquet" / "dataset" / "train.jsonl"
    ).read_bytes()  # byte for byte what the same table as Parquet gives


def test_a_saved_dataset_dict_gives_its_train_split_or_the_one_asked_for(tmp_path):
    source = saved_dict(tmp_path / "saved", train=ROWS, test=OTHER)
    resolve_dataset(str(source), tmp_path / "ws")
    assert read_output(tmp_path / "ws") == ROWS  # never the test split mixed in
    stats = resolve_dataset(str(source), tmp_path / "ws-test", DatasetOptions(split="test"))
    assert read_output(tmp_path / "ws-test") == OTHER and stats.source == f"{source}:test"


def test_a_missing_split_names_the_splits_there_are(tmp_path):
    source = saved_dict(tmp_path / "saved", validation=ROWS, test=OTHER)
    with pytest.raises(DatasetError, match=r"has no split 'train' \(splits: validation, test\); pass split="):
        resolve_dataset(str(source), tmp_path / "ws")
    assert_nothing_written(tmp_path / "ws")


def test_a_bad_record_in_a_saved_dataset_names_the_shard_and_row(tmp_path):
    rows = [
        *ROWS[:2],
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
    ]
    source = saved(tmp_path / "saved", rows)
    with pytest.raises(DatasetError) as info:
        resolve_dataset(str(source), tmp_path / "ws")
    assert f"{source / 'data-00000-of-00001.arrow'}: row 3: messages[1].content" in str(info.value)
    assert_nothing_written(tmp_path / "ws")


def test_a_shard_outside_the_saved_directory_is_refused(tmp_path):
    source = saved(tmp_path / "saved", ROWS)
    state = json.loads((source / "state.json").read_text())
    state["_data_files"] = [{"filename": "../elsewhere.arrow"}]
    (source / "state.json").write_text(json.dumps(state))
    with pytest.raises(DatasetError, match="is not a file inside"):
        resolve_dataset(str(source), tmp_path / "ws")
    assert_nothing_written(tmp_path / "ws")


def test_an_arrow_ipc_file_is_read_too(tmp_path):
    """The IPC *file* layout (pyarrow, polars, feather v2) is the stream behind a preamble."""
    import pyarrow as pa

    table = pa.Table.from_pylist(ROWS)
    with pa.OSFile(str(tmp_path / "d.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    assert resolve_dataset(str(tmp_path / "d.arrow"), tmp_path / "ws").records == len(ROWS)
    assert read_output(tmp_path / "ws") == ROWS

"""Resolving the chat dataset into the workspace: validation with file:line, atomic, skip when unchanged."""

from __future__ import annotations

import json

import pytest

from airflow_provider_sft.core.dataset import BUNDLED_SOURCE, resolve_dataset
from airflow_provider_sft.core.errors import DatasetError


def chat(*turns, system=None):
    messages = [{"role": "system", "content": system}] if system else []
    for user, assistant in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages}


GOOD = chat(("Hi", "Hello!"))


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_bundled_dataset_has_at_least_200_valid_conversations(tmp_path):
    stats = resolve_dataset(BUNDLED_SOURCE, tmp_path)
    assert stats.records >= 200
    assert (tmp_path / "dataset" / "train.jsonl").read_text().count("\n") == stats.records


def test_directory_of_shards_is_concatenated_in_name_order(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_jsonl(shards / "b.jsonl", [chat(("b", "B"))])
    write_jsonl(shards / "a.jsonl", [chat(("a", "A")), chat(("a2", "A2"))])
    (shards / "README.md").write_text("ignored")
    stats = resolve_dataset(str(shards), tmp_path / "ws")
    lines = (tmp_path / "ws" / "dataset" / "train.jsonl").read_text().splitlines()
    assert stats.records == 3
    assert [json.loads(line)["messages"][0]["content"] for line in lines] == ["a", "a2", "b"]


def test_unchanged_source_is_reused_and_changed_source_is_resolved_again(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    first = resolve_dataset(str(source), tmp_path / "ws")
    again = resolve_dataset(str(source), tmp_path / "ws")
    assert not first.reused and again.reused and again.sha256 == first.sha256
    write_jsonl(source, [GOOD, chat(("x", "y"))])
    changed = resolve_dataset(str(source), tmp_path / "ws")
    assert not changed.reused and changed.records == 2


BAD = [
    pytest.param(['{"messages": ['], ":1: invalid JSON", id="broken-json"),
    pytest.param([GOOD, GOOD, '{"messages": [}'], ":3: invalid JSON", id="broken-json-line-3"),
    pytest.param([{"text": "hi"}], ":1: missing field 'messages'", id="no-messages"),
    pytest.param([{"messages": []}], "non-empty list", id="empty-messages"),
    pytest.param([["not", "an", "object"]], "must be a JSON object", id="not-object"),
    pytest.param([{"messages": ["hi"]}], "messages[0] must be an object", id="message-not-object"),
    pytest.param(
        [{"messages": [{"role": "bot", "content": "x"}]}], "messages[0].role must be one of", id="wrong-role"
    ),
    pytest.param(
        [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}],
        "messages[1].content is empty",
        id="empty-content",
    ),
    pytest.param(
        [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 5}]}],
        "messages[1].content must be a string, got int",
        id="non-string-content",
    ),
    pytest.param([{"messages": [{"role": "user", "content": "q"}]}], "no assistant turn", id="no-assistant"),
    pytest.param([], "has no records", id="empty-file"),
]


@pytest.mark.parametrize(("rows", "message"), BAD)
def test_bad_records_name_file_line_and_field_and_write_nothing(tmp_path, rows, message):
    source = write_jsonl(tmp_path / "bad.jsonl", rows) if rows else tmp_path / "bad.jsonl"
    if not rows:
        source.write_text("")
    with pytest.raises(DatasetError) as info:
        resolve_dataset(str(source), tmp_path / "ws")
    assert message in str(info.value)
    assert not (tmp_path / "ws" / "dataset" / "train.jsonl").exists()
    assert not list((tmp_path / "ws" / "dataset").glob(".*"))


def test_missing_source(tmp_path):
    with pytest.raises(DatasetError, match="is not a file or directory"):
        resolve_dataset(str(tmp_path / "nope.jsonl"), tmp_path / "ws")
    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(DatasetError, match="holds no"):
        resolve_dataset(str(tmp_path / "empty-dir"), tmp_path / "ws")


def test_a_failed_resolution_keeps_the_previous_good_dataset(tmp_path):
    resolve_dataset(str(write_jsonl(tmp_path / "good.jsonl", [GOOD])), tmp_path / "ws")
    with pytest.raises(DatasetError):
        resolve_dataset(str(write_jsonl(tmp_path / "bad.jsonl", [GOOD, {"x": 1}])), tmp_path / "ws")
    assert json.loads((tmp_path / "ws" / "dataset" / "train.jsonl").read_text()) == GOOD

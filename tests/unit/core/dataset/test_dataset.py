"""Dataset resolution from local and PVC sources: formats, mappings, validation, confinement, reuse.

The network sources (S3, HTTP, the HuggingFace Hub) are in tests/integration/test_dataset_sources.py.
"""

from __future__ import annotations

import json
import os

import pytest

from airflow_provider_sft.core.dataset import (
    BUNDLED_SOURCE,
    DatasetOptions,
    resolve_dataset,
)
from airflow_provider_sft.core.errors import DatasetError, InvalidParameterError
from tests.dataset_files import (
    GOOD,
    ROWS,
    assert_nothing_written,
    chat,
    gzip_bytes,
    jsonl_bytes,
    parquet_bytes,
    read_output,
    write_csv,
    write_json_array,
    write_jsonl,
    write_parquet,
    zstd_bytes,
)


def test_bundled_dataset_has_at_least_200_valid_conversations(tmp_path):
    stats = resolve_dataset(BUNDLED_SOURCE, tmp_path)
    assert stats.records >= 200 and stats.files == 1 and stats.skipped == 0
    assert (tmp_path / "dataset" / "train.jsonl").read_text().count("\n") == stats.records
    assert stats.source.endswith("chat_sft_sample.jsonl")  # a real location, for lineage


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("d.jsonl", lambda: jsonl_bytes(ROWS)),
        ("d.json", lambda: json.dumps(ROWS, indent=2).encode()),
        ("d.parquet", lambda: parquet_bytes(ROWS)),
        ("d.jsonl.gz", lambda: gzip_bytes(jsonl_bytes(ROWS))),
        ("d.jsonl.zst", lambda: zstd_bytes(jsonl_bytes(ROWS))),
        ("d.json.gz", lambda: gzip_bytes(json.dumps(ROWS).encode())),
        ("d.parquet.zst", lambda: zstd_bytes(parquet_bytes(ROWS))),
        ("no-suffix", lambda: jsonl_bytes(ROWS)),  # sniffed from the content
        ("no-suffix-array", lambda: json.dumps(ROWS).encode()),
    ],
)
def test_every_format_gives_the_same_records(tmp_path, name, payload):
    (tmp_path / name).write_bytes(payload())
    stats = resolve_dataset(str(tmp_path / name), tmp_path / "ws")
    assert read_output(tmp_path / "ws") == ROWS
    assert stats.records == 5 and stats.bytes == (tmp_path / "ws" / "dataset" / "train.jsonl").stat().st_size


def test_csv_with_a_json_messages_column(tmp_path):
    write_csv(tmp_path / "d.csv", ROWS)
    resolve_dataset(str(tmp_path / "d.csv"), tmp_path / "ws")
    assert read_output(tmp_path / "ws") == ROWS


def test_output_has_only_role_and_content(tmp_path):
    rows = [
        {
            "id": 7,
            "messages": [
                {"role": "user", "content": "q", "name": "x"},
                {"role": "assistant", "content": "a"},
            ],
        }
    ]
    resolve_dataset(str(write_jsonl(tmp_path / "d.jsonl", rows)), tmp_path / "ws")
    assert read_output(tmp_path / "ws") == [chat(("q", "a"))]


def test_directory_of_mixed_shards_in_path_order_and_hidden_files_ignored(tmp_path):
    shards = tmp_path / "shards"
    (shards / "part2").mkdir(parents=True)
    write_jsonl(shards / "b.jsonl", [chat(("b", "B"))])
    write_parquet(shards / "a.parquet", [chat(("a", "A")), chat(("a2", "A2"))])
    write_json_array(shards / "part2" / "c.json", [chat(("c", "C"))])
    (shards / "README.md").write_text("ignored")
    (shards / "dataset_info.json").write_text('{"description": "metadata, not data"}')
    write_jsonl(shards / ".hidden.jsonl", [{"broken": True}])
    write_jsonl(shards / "_SUCCESS.jsonl", [{"broken": True}])
    stats = resolve_dataset(str(shards), tmp_path / "ws")
    assert [r["messages"][0]["content"] for r in read_output(tmp_path / "ws")] == ["a", "a2", "b", "c"]
    assert stats.files == 3


def test_pvc_relative_paths_resolve_inside_the_workspace(tmp_path):
    workspace = tmp_path / "pvc"
    (workspace / "data").mkdir(parents=True)
    write_jsonl(workspace / "data" / "chat.jsonl", ROWS)
    for location in (
        "data/chat.jsonl",
        "pvc://data/chat.jsonl",
        "data",
        f"file://{workspace}/data/chat.jsonl",
    ):
        assert resolve_dataset(location, workspace).records == 5


@pytest.mark.parametrize(
    ("mapping", "rows", "expected"),
    [
        (
            "prompt_completion",
            [
                {"prompt": "2+2?", "completion": "4"},
                {"prompt": "Hi", "completion": "Hey", "system": "Be kind."},
            ],
            [chat(("2+2?", "4")), chat(("Hi", "Hey"), system="Be kind.")],
        ),
        (
            "instruction",
            [
                {"instruction": "Translate", "input": "hola", "output": "hello"},
                {"instruction": "Say hi", "output": "hi"},
            ],
            [chat(("Translate\n\nhola", "hello")), chat(("Say hi", "hi"))],
        ),
    ],
)
@pytest.mark.parametrize("writer", [write_jsonl, write_parquet, write_csv])
def test_opt_in_mappings(tmp_path, mapping, rows, expected, writer):
    suffix = {write_jsonl: "jsonl", write_parquet: "parquet", write_csv: "csv"}[writer]
    fields = sorted({k for r in rows for k in r}) if writer is write_csv else None
    source = writer(tmp_path / f"d.{suffix}", rows, **({"fields": fields} if fields else {}))
    resolve_dataset(str(source), tmp_path / "ws", DatasetOptions(mapping=mapping))
    assert read_output(tmp_path / "ws") == expected


def test_other_layouts_are_never_guessed(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "c"}])
    with pytest.raises(
        DatasetError, match=r"d.jsonl:1: missing field 'messages' .*mapping='prompt_completion'"
    ):
        resolve_dataset(str(source), tmp_path / "ws")


def test_skip_bad_records_counts_them(tmp_path):
    rows = [GOOD, '{"messages": [', {"text": "x"}, GOOD, {"messages": [{"role": "user", "content": "q"}]}]
    stats = resolve_dataset(
        str(write_jsonl(tmp_path / "d.jsonl", rows)), tmp_path / "ws", DatasetOptions(on_bad_record="skip")
    )
    assert (stats.records, stats.skipped) == (2, 3)
    assert [r.split(": ", 1)[0].rsplit(":", 1)[-1] for r in stats.skip_reasons] == ["2", "3", "5"]
    assert read_output(tmp_path / "ws") == [GOOD, GOOD]


def test_unchanged_source_is_reused_and_changed_source_or_options_resolve_again(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    first = resolve_dataset(str(source), tmp_path / "ws")
    again = resolve_dataset(str(source), tmp_path / "ws")
    assert not first.reused and again.reused and again.sha256 == first.sha256
    skip = resolve_dataset(str(source), tmp_path / "ws", DatasetOptions(on_bad_record="skip"))
    assert not skip.reused
    write_jsonl(source, [GOOD, chat(("x", "y"))])
    changed = resolve_dataset(str(source), tmp_path / "ws")
    assert not changed.reused and changed.records == 2


def test_a_tampered_output_is_resolved_again(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    resolve_dataset(str(source), tmp_path / "ws")
    (tmp_path / "ws" / "dataset" / "train.jsonl").write_text("{}\n")
    assert not resolve_dataset(str(source), tmp_path / "ws").reused
    assert read_output(tmp_path / "ws") == [GOOD]


def test_a_failed_resolution_leaves_no_stale_dataset_behind(tmp_path):
    # The workspace's train.jsonl is the requested source or nothing: a training task
    # pointed at it must not train on an older dataset after this resolution failed.
    resolve_dataset(str(write_jsonl(tmp_path / "good.jsonl", [GOOD])), tmp_path / "ws")
    with pytest.raises(DatasetError):
        resolve_dataset(str(write_jsonl(tmp_path / "bad.jsonl", [GOOD, {"x": 1}])), tmp_path / "ws")
    assert_nothing_written(tmp_path / "ws")


def test_approximate_tokens_with_a_tokenizer(tmp_path, tiny_model):
    from tokenizers import Tokenizer

    source = write_jsonl(tmp_path / "d.jsonl", ROWS)
    stats = resolve_dataset(str(source), tmp_path / "ws", DatasetOptions(tokenizer=str(tiny_model)))
    tokenizer = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    expected = sum(
        len(tokenizer.encode(m["content"], add_special_tokens=False).ids) for r in ROWS for m in r["messages"]
    )
    assert stats.approx_tokens == expected > 0
    assert resolve_dataset(str(source), tmp_path / "ws2").approx_tokens is None


# --- malformed input: each names where, and nothing is left behind ------------------------------


def _broken_json_array(path):
    path.write_text(f'[\n  {json.dumps(GOOD)},\n  {{"messages": [}}\n]')


def _symlink_escape(path):
    outside = path.parent / "outside.jsonl"
    write_jsonl(outside, [GOOD])
    path.mkdir()
    os.symlink(outside, path / "link.jsonl")


def _write(content: bytes | str):
    def writer(path):
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return writer


MALFORMED = [
    pytest.param("d.jsonl", _write('{"messages": ['), None, "d.jsonl:1: invalid JSON", id="broken-json"),
    pytest.param(
        "d.jsonl",
        _write(jsonl_bytes([GOOD, GOOD, '{"messages": [}'])),
        None,
        "d.jsonl:3: invalid JSON",
        id="broken-json-line-3",
    ),
    pytest.param(
        "d.jsonl",
        _write(jsonl_bytes([{"text": "hi"}])),
        None,
        "d.jsonl:1: missing field 'messages'",
        id="no-messages",
    ),
    pytest.param(
        "d.jsonl",
        _write(jsonl_bytes([{"messages": []}])),
        None,
        "d.jsonl:1: field 'messages' must be a non-empty list",
        id="empty-messages",
    ),
    pytest.param(
        "d.jsonl",
        _write(jsonl_bytes([["a", "b"]])),
        None,
        "d.jsonl:1: record must be a JSON object, got list",
        id="not-object",
    ),
    pytest.param(
        "d.jsonl",
        _write(jsonl_bytes([{"messages": ["hi"]}])),
        None,
        "d.jsonl:1: messages[0] must be an object",
        id="message-not-object",
    ),
    pytest.param(
        "d.jsonl",
        _write(jsonl_bytes([GOOD, {"messages": [{"role": "bot", "content": "x"}]}])),
        None,
        "d.jsonl:2: messages[0].role must be one of system, user, assistant, got another value",
        id="wrong-role",
    ),
    pytest.param(
        "d.jsonl",
        _write(
            jsonl_bytes(
                [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}]
            )
        ),
        None,
        "d.jsonl:1: messages[1].content is empty",
        id="empty-content",
    ),
    pytest.param(
        "d.jsonl",
        _write(
            jsonl_bytes(
                [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 5}]}]
            )
        ),
        None,
        "messages[1].content must be a string, got int",
        id="non-string-content",
    ),
    pytest.param(
        "d.jsonl",
        _write(jsonl_bytes([{"messages": [{"role": "user", "content": "q"}]}])),
        None,
        "d.jsonl:1: 'messages' has no assistant turn",
        id="no-assistant",
    ),
    pytest.param("d.jsonl", _write(""), None, "has no records", id="empty-file"),
    pytest.param("d.jsonl", _write("\n\n  \n"), None, "has no records", id="blank-lines-only"),
    pytest.param(
        "d.txt", _write("hello world\n"), None, "d.txt: unknown dataset format", id="unknown-format"
    ),
    pytest.param(
        "d.json",
        _write('{"messages": []}'),
        None,
        "d.json:1: a .json dataset must be a JSON array",
        id="json-not-array",
    ),
    pytest.param(
        "d.json",
        _broken_json_array,
        None,
        "d.json:3: invalid JSON in record 2",
        id="json-array-broken-record",
    ),
    pytest.param(
        "d.json",
        _write(
            '[{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]} {}]'
        ),
        None,
        "expected ',' or ']' after record 1",
        id="json-array-missing-comma",
    ),
    pytest.param(
        "d.json",
        _write(json.dumps([GOOD, {"messages": [{"role": "user", "content": "q"}]}], indent=1)),
        None,
        "d.json: record 2 (line 14): 'messages' has no assistant turn",
        id="json-array-bad-record",
    ),
    pytest.param(
        "d.parquet",
        lambda p: write_parquet(p, [{"text": "x"}]),
        None,
        "d.parquet: Parquet column 'messages' is missing (columns: text)",
        id="parquet-no-messages-column",
    ),
    pytest.param(
        "d.parquet",
        _write(b"PAR1 this is not really parquet"),
        None,
        "d.parquet: not a readable Parquet file",
        id="parquet-corrupt",
    ),
    pytest.param(
        "d.parquet",
        lambda p: write_parquet(p, [GOOD, GOOD, {"messages": [{"role": "user", "content": "q", "x": None}]}]),
        None,
        "d.parquet: row 3: 'messages' has no assistant turn",
        id="parquet-bad-row",
    ),
    pytest.param(
        "d.csv",
        _write("text\nhello\n"),
        None,
        "d.csv:1: CSV column 'messages' is missing (header: text)",
        id="csv-no-column",
    ),
    pytest.param(
        "d.csv",
        _write('messages\n"[{""role"": ""user"""\n'),
        None,
        "d.csv:2: column 'messages' is not valid JSON",
        id="csv-bad-json",
    ),
    pytest.param(
        "d.jsonl.gz",
        _write(gzip_bytes(jsonl_bytes([GOOD] * 50))[:40]),
        None,
        "d.jsonl.gz: compressed stream is truncated",
        id="gzip-truncated",
    ),
    pytest.param(
        "d.jsonl.zst",
        _write(b"\x28\xb5\x2f\xfd" + b"garbage" * 10),
        None,
        "d.jsonl.zst: cannot be decompressed",
        id="zstd-garbage",
    ),
    pytest.param(
        "d.jsonl",
        _write(b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}\n'),
        None,
        "d.jsonl:1: invalid JSON",
        id="not-utf8",
    ),
    pytest.param(
        "d.jsonl",
        _write(jsonl_bytes([{"prompt": "p"}])),
        {"mapping": "prompt_completion"},
        "d.jsonl:1: missing field 'completion'",
        id="mapping-missing-field",
    ),
    pytest.param(
        "d.jsonl",
        _write(jsonl_bytes([{"instruction": "i", "output": 3}])),
        {"mapping": "instruction"},
        "d.jsonl:1: field 'output' must be a string, got int",
        id="mapping-non-string",
    ),
    pytest.param(
        "d.jsonl",
        _write(jsonl_bytes(['{"messages": [', {"x": 1}])),
        {"on_bad_record": "skip"},
        "has no usable records (2 bad records skipped; first: ",
        id="all-records-skipped",
    ),
    pytest.param("dir", lambda p: p.mkdir(), None, "holds no data files", id="empty-directory"),
    pytest.param(
        "dir",
        _symlink_escape,
        None,
        "link.jsonl: symlink points outside the dataset directory",
        id="symlink-escape",
    ),
]


@pytest.mark.parametrize(("name", "make", "options", "message"), MALFORMED)
def test_malformed_input_names_where_and_writes_nothing(tmp_path, name, make, options, message):
    make(tmp_path / name)
    with pytest.raises(DatasetError) as info:
        resolve_dataset(str(tmp_path / name), tmp_path / "ws", DatasetOptions(**(options or {})))
    assert message in str(info.value)
    assert_nothing_written(tmp_path / "ws")


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("../outside.jsonl", "escapes the workspace"),
        ("pvc://../../etc/passwd", "escapes the workspace"),
        ("pvc:///etc/passwd", "escapes the workspace"),
        ("data/missing.jsonl", "does not exist"),
        ("ftp://example.com/d.jsonl", "unsupported scheme 'ftp'"),
        ("", "Dataset source is empty"),
    ],
)
def test_bad_locations_are_refused_before_reading(tmp_path, location, message):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    write_jsonl(tmp_path / "outside.jsonl", [GOOD])
    with pytest.raises(DatasetError, match=message):
        resolve_dataset(location, workspace)
    assert_nothing_written(workspace)


def test_the_output_directory_is_never_its_own_source(tmp_path):
    resolve_dataset(str(write_jsonl(tmp_path / "d.jsonl", [GOOD])), tmp_path / "ws")
    for location in ("dataset/train.jsonl", "dataset", str(tmp_path / "ws" / "dataset" / "train.jsonl")):
        with pytest.raises(DatasetError, match="the source lies in the output directory"):
            resolve_dataset(location, tmp_path / "ws", DatasetOptions(mapping="prompt_completion"))
        assert read_output(tmp_path / "ws") == [GOOD]


def test_a_workspace_symlink_out_of_the_workspace_is_refused(tmp_path):
    workspace, elsewhere = tmp_path / "ws", tmp_path / "elsewhere"
    workspace.mkdir()
    elsewhere.mkdir()
    (workspace / "dataset").symlink_to(elsewhere)
    with pytest.raises(DatasetError, match="outside the workspace"):
        resolve_dataset(str(write_jsonl(tmp_path / "d.jsonl", [GOOD])), workspace)
    assert list(elsewhere.iterdir()) == []
    (workspace / "data").symlink_to(tmp_path)
    with pytest.raises(DatasetError, match="symlink out of the workspace"):
        resolve_dataset("data/d.jsonl", workspace)


def test_invalid_options_name_the_parameter():
    with pytest.raises(InvalidParameterError) as info:
        DatasetOptions.build(mapping="alpaca", on_bad_record="ignore", format="xml")
    assert set(info.value.errors) == {"mapping", "on_bad_record", "format"}


def test_parquet_columnar_fast_path_writes_what_the_row_path_writes(tmp_path):
    """Valid chat batches skip the per-row path; the bytes must be what orjson writes row by row."""
    import orjson

    from airflow_provider_sft.core.dataset.formats import Validated, read_parquet
    from airflow_provider_sft.core.dataset.records import RecordMapping

    tricky = 'a "quoted" \\ back\\slash é ✓ line\nbreak\ttab\r\x08\x0c'
    rows = [*ROWS, chat(("q", tricky))] * 700  # several batches
    path = write_parquet(tmp_path / "d.parquet", rows)
    fast = list(read_parquet(path, "d", RecordMapping.MESSAGES))
    assert {type(record) for _, record, _ in fast} == {Validated}
    assert sum(record.count for _, record, _ in fast) == len(rows)
    row_path = [record for _, record, _ in read_parquet(path, "d", RecordMapping.MESSAGES, fast=False)]
    expected = b"".join(orjson.dumps(r) + b"\n" for r in row_path)
    assert b"".join(bytes(blob) for _, _, blob in fast) == expected
    resolve_dataset(str(path), tmp_path / "ws")
    assert (tmp_path / "ws" / "dataset" / "train.jsonl").read_bytes() == expected
    assert read_output(tmp_path / "ws") == rows


def test_parquet_rare_control_characters_take_the_row_path(tmp_path):
    import orjson

    from airflow_provider_sft.core.dataset.formats import Validated, read_parquet
    from airflow_provider_sft.core.dataset.records import RecordMapping

    rows = [chat(("bell \x07 and \x01", "ok"))]
    items = list(read_parquet(write_parquet(tmp_path / "d.parquet", rows), "d", RecordMapping.MESSAGES))
    assert not any(isinstance(record, Validated) for _, record, _ in items)
    resolve_dataset(str(tmp_path / "d.parquet"), tmp_path / "ws")
    assert (tmp_path / "ws" / "dataset" / "train.jsonl").read_bytes() == orjson.dumps(rows[0]) + b"\n"


@pytest.mark.parametrize("option", [{"split": "test"}, {"subset": "fr"}, {"revision": "v1"}])
def test_hub_only_options_on_another_source_are_an_error_not_ignored(tmp_path, option):
    source = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    with pytest.raises(DatasetError, match=f"{next(iter(option))}: only for a HuggingFace dataset source"):
        resolve_dataset(str(source), tmp_path / "ws", DatasetOptions(**option))
    assert_nothing_written(tmp_path / "ws")
    # A connection's default revision is not the user's choice: it applies to Hub sources only.
    assert (
        resolve_dataset(str(source), tmp_path / "ws", DatasetOptions(hf_default_revision="main")).records == 1
    )


def test_a_utf8_bom_is_accepted_in_jsonl_as_in_json_and_csv(tmp_path):
    from airflow_provider_sft.core.dataset import resolve_dataset

    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data = tmp_path / "bom.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + (json.dumps(row) + "\n").encode() * 2)
    assert resolve_dataset(str(data), tmp_path / "ws").records == 2

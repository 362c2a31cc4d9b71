"""Record readers for JSONL, JSON arrays, Parquet and CSV, each streaming with bounded memory.

A reader yields ``(where, record, raw_line)``: ``where`` names the file and the line,
row or record number for error messages; ``raw_line`` is the untouched JSONL line so an
already clean record can be written without re-encoding. A record that cannot be
parsed in isolation is yielded as a :class:`BadRecordError` (the caller fails or skips
it); damage a reader cannot step over (a broken JSON array, an unreadable Parquet file)
raises :class:`DatasetError`.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.dataset.records import OPTIONAL_FIELDS, ROLES, BadRecordError, RecordMapping
from airflow_provider_sft.core.dataset.streams import strip_compression_suffix
from airflow_provider_sft.core.errors import DatasetError

#: The largest single record (a JSONL or CSV line, a JSON array element) a dataset may hold. A
#: chat sample is far below it (32 MiB is millions of tokens); a larger one is refused by its
#: size, naming the file and line, before it is held whole: memory stays bounded by it.
MAX_RECORD_BYTES = 32 << 20
#: A CSV header is shown in an error only when its columns look like column names: a file that
#: is not a dataset (``/etc/passwd`` behind a ``.csv`` name) never has its content echoed.
_COLUMN_NAME = re.compile(r"^[\w .-]{1,64}$")
PARQUET_MAGIC = b"PAR1"
#: Arrow IPC: a stream opens with a continuation marker, a file with ``ARROW1`` and 2 bytes of padding.
ARROW_STREAM_MAGIC = b"\xff\xff\xff\xff"
ARROW_FILE_MAGIC = b"ARROW1"
PARQUET_BATCH_ROWS = 2048

Item = tuple[str, Any, bytes | None]


class Format(str, Enum):
    AUTO = "auto"
    JSONL = "jsonl"
    JSON = "json"
    PARQUET = "parquet"
    CSV = "csv"
    ARROW = "arrow"  # Arrow IPC, as ``datasets.save_to_disk()`` writes its shards


SUFFIXES = {".jsonl": Format.JSONL, ".ndjson": Format.JSONL, ".json": Format.JSON}
SUFFIXES |= {".parquet": Format.PARQUET, ".pq": Format.PARQUET, ".csv": Format.CSV}


def format_from_name(name: str) -> Format | None:
    return SUFFIXES.get(Path(strip_compression_suffix(name)).suffix.lower())


#: JSON files that sit next to data shards but describe them (HF ``save_to_disk``, our manifest).
METADATA_NAMES = frozenset(
    ("dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json", "manifest.json")
)


def is_data_file(name: str) -> bool:
    """Whether a file found in a directory, S3 prefix or Hub repo is data (by suffix, metadata excluded)."""
    return format_from_name(name) is not None and Path(name).name not in METADATA_NAMES


def sniff(head: bytes) -> Format | None:
    """Format from the first bytes of the (decompressed) content, for names without a known suffix."""
    if head.startswith(PARQUET_MAGIC):
        return Format.PARQUET
    if head.startswith((ARROW_STREAM_MAGIC, ARROW_FILE_MAGIC)):
        return Format.ARROW
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"["):
        return Format.JSON
    if stripped.startswith(b"{"):
        return Format.JSONL
    return None


def choose_format(name: str, requested: Format, head: bytes) -> Format:
    if requested is not Format.AUTO:
        return requested
    found = format_from_name(name) or sniff(head)
    if found is None:
        raise DatasetError(
            f"{name}: unknown dataset format (expected .jsonl, .json, .parquet or .csv, optionally "
            ".gz/.zst); pass format= to say which"
        )
    return found


def bounded_lines(stream: BinaryIO, name: str, limit: int = MAX_RECORD_BYTES) -> Iterator[tuple[int, bytes]]:
    """``(line number, line)`` of ``stream``, never reading more than ``limit`` bytes of one line.

    A longer line raises :class:`DatasetError` naming the file and line, after at most
    ``limit + 1`` bytes of it were read: a multi-gigabyte line never reaches memory.
    """
    for number in itertools.count(1):
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) > limit:
            raise DatasetError(
                f"{name}:{number}: line is longer than {limit} bytes (the most one record may hold); refused"
            )
        yield number, line


def read_jsonl(stream: BinaryIO, name: str) -> Iterator[Item]:
    for line_number, line in bounded_lines(stream, name):
        if line_number == 1 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM, as JSON and CSV allow
            line = line[3:]
        if not line.strip():
            continue
        where = f"{name}:{line_number}"
        try:
            yield where, jsonio.loads(line), line
        except ValueError as error:
            yield where, BadRecordError(f"{where}: invalid JSON ({error})"), None


def read_json_array(stream: BinaryIO, name: str) -> Iterator[Item]:
    """Stream the elements of a top-level JSON array, one at a time (never the whole file)."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig")
    decoder = json.JSONDecoder()
    buffer, position, line, eof = "", 0, 1, False

    def fill() -> bool:
        """Append the next chunk (dropping what was consumed); False at end of file, buffer untouched."""
        nonlocal buffer, position, eof
        chunk = "" if eof else text.read(1 << 20)
        if not chunk:
            eof = True
            return False
        buffer, position = buffer[position:] + chunk, 0
        return True

    def skip_space() -> str:
        nonlocal position, line
        while True:
            while position < len(buffer) and buffer[position] in " \t\r\n":
                line += buffer[position] == "\n"
                position += 1
            if position < len(buffer) or not fill():
                return buffer[position] if position < len(buffer) else ""

    if skip_space() != "[":
        raise DatasetError(f"{name}:{line}: a .json dataset must be a JSON array of records (or use .jsonl)")
    position += 1
    index = 0
    while True:
        token = skip_space()
        if token == "]" and index == 0:
            return
        while True:
            try:
                record, end = decoder.raw_decode(buffer, position)
                break
            except json.JSONDecodeError as error:
                if len(buffer) - position > MAX_RECORD_BYTES:
                    raise DatasetError(
                        f"{name}:{line}: record {index + 1} is longer than {MAX_RECORD_BYTES} bytes "
                        "(the most one record may hold); refused"
                    ) from None
                if not fill():
                    where = f"{name}:{line + buffer.count(chr(10), position, error.pos)}"
                    raise DatasetError(f"{where}: invalid JSON in record {index + 1} ({error.msg})") from None
        where = f"{name}: record {index + 1} (line {line})"
        line += buffer.count("\n", position, end)
        position = end
        yield where, record, None
        index += 1
        token = skip_space()
        if token == "]":
            return
        if token != ",":
            raise DatasetError(
                f"{name}:{line}: expected ',' or ']' after record {index}, got {token or 'end of file'!r}"
            )
        position += 1


def read_parquet(path: Path, name: str, mapping: RecordMapping, *, fast: bool = True) -> Iterator[Item]:
    """Rows of a Parquet file, one row group at a time (``pre_buffer`` off: it caches every group read)."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path, pre_buffer=False)
    except Exception as error:  # pyarrow raises ArrowInvalid/OSError for a broken file
        raise DatasetError(f"{name}: not a readable Parquet file ({error})") from None

    def batches(columns: list[str]) -> Iterable[Any]:
        return parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns, use_threads=False)

    yield from _table_rows("Parquet", name, parquet.schema_arrow, batches, mapping, fast=fast)


def _chat_column(column_type: Any) -> bool:
    import pyarrow as pa

    if not (pa.types.is_list(column_type) or pa.types.is_large_list(column_type)):
        return False
    item = column_type.value_type
    if not pa.types.is_struct(item):
        return False
    fields = {item.field(i).name: item.field(i).type for i in range(item.num_fields)}
    return all(
        k in fields and (pa.types.is_string(fields[k]) or pa.types.is_large_string(fields[k]))
        for k in ("role", "content")
    )


#: JSON escapes orjson writes for the control characters text usually holds; any other control
#: character sends the batch down the row path (where orjson writes its ``\\u00XX`` form).
_ESCAPES = (
    ("\\", "\\\\"),
    ('"', '\\"'),
    ("\n", "\\n"),
    ("\r", "\\r"),
    ("\t", "\\t"),
    ("\b", "\\b"),
    ("\f", "\\f"),
)
_SIMPLE_CONTROLS = (0x08, 0x09, 0x0A, 0x0C, 0x0D)


class Validated:
    """``record`` of an item whose ``raw_line`` holds ``count`` validated, normalized output lines."""

    __slots__ = ("count",)

    def __init__(self, count: int):
        self.count = count


def _string_bytes(array: Any) -> Any:
    """The UTF-8 bytes of a (sliced) Arrow string array as a numpy view, no copy."""
    import numpy as np

    _, offsets_buffer, data = array.buffers()
    width = np.int64 if array.type == "large_string" else np.int32
    offsets = np.frombuffer(offsets_buffer, dtype=width)[array.offset : array.offset + len(array) + 1]
    return (
        np.frombuffer(data, dtype=np.uint8)[int(offsets[0]) : int(offsets[-1])]
        if data
        else np.empty(0, np.uint8)
    )


class _Lazy:
    """Arrow arrays built on first use (pyarrow is imported only for Parquet)."""

    def __getattr__(self, name: str) -> Any:
        import pyarrow as pa

        self.roles = pa.array(list(ROLES))
        self.prefixes = pa.array([f'{{"role":"{role}","content":"' for role in ROLES])
        return getattr(self, name)


_ARROW = _Lazy()


def _json_escaped(content: Any, raw: Any) -> Any:
    """``content`` with JSON string escapes applied: only the strings that need it, only the passes needed."""
    import numpy as np
    import pyarrow.compute as pc

    flags = (raw < 0x20) | (raw == 0x22) | (raw == 0x5C)
    if not flags.any():
        return content
    present = set(np.unique(raw[flags]).tolist())
    lengths = pc.binary_length(content).to_numpy(zero_copy_only=False)
    starts = np.concatenate(([0], lengths[:-1].cumsum()))
    mask = np.logical_or.reduceat(flags, starts)  # strings holding a character to escape (none is empty)
    subset = content.filter(mask)
    for plain, escape in _ESCAPES:
        if ord(plain) in present:
            subset = pc.replace_substring(subset, plain, escape)
    return pc.replace_with_mask(content, mask, subset)


def _validated_lines(messages: Any) -> tuple[Any, int] | None:
    """The output lines of a batch whose every row is a valid chat sample, or ``None`` if any is not.

    Everything is Arrow compute and numpy over the batch's buffers: roles in the closed set,
    contents non-blank, an assistant turn per row; then each line is assembled with Arrow string
    kernels, JSON-escaped exactly as orjson does, and handed back as one contiguous buffer.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(messages) == 0 or messages.null_count:
        return None
    flat = messages.flatten()  # the rows' messages, offsets applied
    if flat.null_count or len(flat) == 0:
        return None
    children = flat.flatten()  # the struct's fields, offsets applied
    role = children[flat.type.get_field_index("role")]
    content = children[flat.type.get_field_index("content")]
    if role.null_count or content.null_count:
        return None
    if pc.list_value_length(messages).to_numpy(zero_copy_only=False).min() == 0:
        return None
    role_index = pc.index_in(role, value_set=_ARROW.roles)
    if role_index.null_count:  # a role outside system|user|assistant
        return None
    if pc.any(pc.or_(pc.equal(pc.binary_length(content), 0), pc.utf8_is_space(content))).as_py():
        return None
    is_assistant = pc.equal(role_index, ROLES.index("assistant")).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(messages).to_numpy()
    if np.bincount(parents[is_assistant], minlength=len(messages)).min() == 0:
        return None
    raw = _string_bytes(content)
    controls = raw[raw < 0x20]
    if len(controls) and not np.isin(controls, _SIMPLE_CONTROLS).all():
        return None
    escaped = _json_escaped(content, raw)
    fragments = pc.binary_join_element_wise(_ARROW.prefixes.take(role_index), escaped, '"}', "")
    rows = pa.ListArray.from_arrays(pc.subtract(messages.offsets, messages.offsets[0]), fragments)
    lines = pc.binary_join_element_wise('{"messages":[', pc.binary_join(rows, ","), "]}\n", "")
    return memoryview(_string_bytes(lines)), len(lines)


def _shown_header(header: Sequence[str]) -> str:
    if not header:
        return "empty"
    if all(_COLUMN_NAME.match(column) for column in header):
        return ", ".join(header)
    return f"{len(header)} column(s) that do not look like column names, not shown"


def read_arrow(stream: BinaryIO, name: str, mapping: RecordMapping, *, fast: bool = True) -> Iterator[Item]:
    """Rows of an Arrow IPC stream (``datasets.save_to_disk()`` shards), one record batch at a time.

    Read front to back, never mapped or seeked, so a shard on a network stream works too; an IPC
    *file* is a stream behind an 8-byte preamble.
    """
    import pyarrow as pa

    if stream.peek(len(ARROW_FILE_MAGIC))[: len(ARROW_FILE_MAGIC)] == ARROW_FILE_MAGIC:  # type: ignore[attr-defined]
        stream.read(8)
    try:
        reader = pa.ipc.open_stream(stream)
    except (pa.ArrowInvalid, OSError) as error:
        raise DatasetError(f"{name}: not a readable Arrow file ({error})") from None

    def batches(columns: list[str]) -> Iterable[Any]:
        return (batch.select(columns) for batch in reader)

    yield from _table_rows("Arrow", name, reader.schema, batches, mapping, fast=fast)


def _table_rows(
    kind: str,
    name: str,
    schema: Any,
    batches: Callable[[list[str]], Iterable[Any]],
    mapping: RecordMapping,
    *,
    fast: bool,
) -> Iterator[Item]:
    """The items of a columnar file's record batches (``batches(columns)`` reads those columns only).

    Chat columns (``messages: list<struct<role, content>>``) are checked a whole batch at a time
    with Arrow compute; a batch that passes is written as lines built straight from its string
    columns (one ``Validated`` item per batch). A batch with any doubt goes row by row, for the exact error.
    """
    import pyarrow as pa

    available = set(schema.names)
    missing = [field for field in mapping.fields if field not in available]
    if missing:
        raise DatasetError(
            f"{name}: {kind} column {missing[0]!r} is missing (columns: {', '.join(sorted(available)) or 'none'})"
        )
    columns = [*mapping.fields, *(f for f in OPTIONAL_FIELDS[mapping] if f in available)]
    columnar = fast and mapping is RecordMapping.MESSAGES and _chat_column(schema.field("messages").type)
    row = 0
    try:
        for batch in batches(columns):
            checked = _validated_lines(batch.column(0)) if columnar else None
            if checked is not None:
                blob, count = checked
                row += count
                yield "", Validated(count), blob
                continue
            for record in batch.to_pylist():
                row += 1
                yield f"{name}: row {row}", record, None
    except (pa.ArrowInvalid, OSError) as error:
        raise DatasetError(f"{name}: {kind} read failed after row {row} ({error})") from None


def read_csv(stream: BinaryIO, name: str, mapping: RecordMapping) -> Iterator[Item]:
    """CSV with a header; with the ``messages`` mapping, the ``messages`` column holds JSON text."""
    csv.field_size_limit(MAX_RECORD_BYTES)
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    reader = csv.DictReader(decoder.decode(line) for _, line in bounded_lines(stream, name))
    header = reader.fieldnames or []
    missing = [field for field in mapping.fields if field not in header]
    if missing:
        raise DatasetError(
            f"{name}:1: CSV column {missing[0]!r} is missing (header: {_shown_header(header)})"
        )
    for record in reader:
        where = f"{name}:{reader.line_num}"
        if mapping is RecordMapping.MESSAGES:
            try:
                record = {**record, "messages": jsonio.loads(record["messages"] or "null")}
            except ValueError as error:
                yield where, BadRecordError(f"{where}: column 'messages' is not valid JSON ({error})"), None
                continue
        yield where, record, None

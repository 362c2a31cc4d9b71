"""Record readers for JSONL, JSON arrays, Parquet and CSV, each streaming with bounded memory.

A reader yields ``(where, record, raw_line)``: ``where`` names the file and the line,
row or record number for error messages; ``raw_line`` is the untouched JSONL line so an
already clean record can be written without re-encoding. A record that cannot be
parsed in isolation is yielded as a :class:`BadRecordError` (the caller fails or skips
it); damage a reader cannot step over (a broken JSON array, an unreadable Parquet file)
raises :class:`DatasetError`.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from airflow_provider_sft.core.dataset.records import OPTIONAL_FIELDS, BadRecordError, Mapping
from airflow_provider_sft.core.dataset.streams import strip_compression_suffix

__all__ = ["Format", "choose_format", "format_from_name", "is_data_file", "strip_compression_suffix"]
from airflow_provider_sft.core.errors import DatasetError

#: The largest single record a JSON array may hold before it is called malformed.
MAX_RECORD_BYTES = 64 << 20
PARQUET_MAGIC = b"PAR1"
PARQUET_BATCH_ROWS = 2048

Item = tuple[str, Any, bytes | None]


class Format(str, Enum):
    AUTO = "auto"
    JSONL = "jsonl"
    JSON = "json"
    PARQUET = "parquet"
    CSV = "csv"


SUFFIXES = {".jsonl": Format.JSONL, ".ndjson": Format.JSONL, ".json": Format.JSON}
SUFFIXES |= {".parquet": Format.PARQUET, ".pq": Format.PARQUET, ".csv": Format.CSV}


def format_from_name(name: str) -> Format | None:
    return SUFFIXES.get(Path(strip_compression_suffix(name)).suffix.lower())


def is_data_file(name: str) -> bool:
    return format_from_name(name) is not None


def sniff(head: bytes) -> Format | None:
    """Format from the first bytes of the (decompressed) content, for names without a known suffix."""
    if head.startswith(PARQUET_MAGIC):
        return Format.PARQUET
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


def read_jsonl(stream: BinaryIO, name: str) -> Iterator[Item]:
    for line_number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        where = f"{name}:{line_number}"
        try:
            yield where, orjson.loads(line), line
        except orjson.JSONDecodeError as error:
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
                if len(buffer) - position > MAX_RECORD_BYTES or not fill():
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


def read_parquet(path: Path, name: str, mapping: Mapping) -> Iterator[Item]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises ArrowInvalid/OSError for a broken file
        raise DatasetError(f"{name}: not a readable Parquet file ({error})") from None
    available = set(parquet.schema_arrow.names)
    missing = [field for field in mapping.fields if field not in available]
    if missing:
        raise DatasetError(
            f"{name}: Parquet column {missing[0]!r} is missing (columns: {', '.join(sorted(available)) or 'none'})"
        )
    columns = [*mapping.fields, *(f for f in OPTIONAL_FIELDS[mapping] if f in available)]
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns, use_threads=False):
            for record in batch.to_pylist():
                row += 1
                yield f"{name}: row {row}", record, None
    except OSError as error:
        raise DatasetError(f"{name}: Parquet read failed after row {row} ({error})") from None


def read_csv(stream: BinaryIO, name: str, mapping: Mapping) -> Iterator[Item]:
    """CSV with a header; with the ``messages`` mapping, the ``messages`` column holds JSON text."""
    csv.field_size_limit(min(sys.maxsize, MAX_RECORD_BYTES))
    reader = csv.DictReader(io.TextIOWrapper(stream, encoding="utf-8-sig", newline=""))
    header = reader.fieldnames or []
    missing = [field for field in mapping.fields if field not in header]
    if missing:
        raise DatasetError(
            f"{name}:1: CSV column {missing[0]!r} is missing (header: {', '.join(header) or 'empty'})"
        )
    for record in reader:
        where = f"{name}:{reader.line_num}"
        if mapping is Mapping.MESSAGES:
            try:
                record = {**record, "messages": orjson.loads(record["messages"] or "null")}
            except orjson.JSONDecodeError as error:
                yield where, BadRecordError(f"{where}: column 'messages' is not valid JSON ({error})"), None
                continue
        yield where, record, None

"""Resolve a chat dataset into ``<workspace>/dataset/train.jsonl``, validated and streamed.

Sources handled here: the bundled sample dataset (``"bundled"``), a local/PVC
JSONL file, or a directory of ``*.jsonl`` files (read in name order). Every
record must be a chat sample: ``messages`` is a list of ``{role, content}``
with roles ``system|user|assistant``, string content that is not blank, and
at least one assistant turn. The first bad record stops the resolution with an
error naming the file, line and field, and nothing is written.

Records are streamed to a temporary file and renamed into place, so memory does
not grow with the dataset and a failure never leaves a partial ``train.jsonl``.
A small manifest (source identity + sha256) lets a re-run skip work when the
source has not changed, and makes a stale dataset on a reused PVC visible.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.errors import DatasetError
from airflow_provider_sft.core.files import atomic_write_bytes, sha256_file
from airflow_provider_sft.core.sample_data import bundled_dataset_path

BUNDLED_SOURCE = "bundled"
TRAIN_FILE = "train.jsonl"
MANIFEST_FILE = "manifest.json"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class DatasetStats:
    path: str
    source: str
    records: int
    bytes: int
    sha256: str
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_record(record: Any, where: str) -> None:
    """Raise :class:`DatasetError` naming ``where`` (file:line) and the field when ``record`` is not a chat sample."""
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: record must be a JSON object, got {type(record).__name__}")
    messages = record.get("messages")
    if messages is None:
        raise DatasetError(f"{where}: missing field 'messages'")
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"{where}: field 'messages' must be a non-empty list")
    for index, message in enumerate(messages):
        field = f"messages[{index}]"
        if not isinstance(message, dict):
            raise DatasetError(f"{where}: {field} must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise DatasetError(f"{where}: {field}.role must be one of {', '.join(ROLES)}, got {role!r}")
        content = message.get("content")
        if not isinstance(content, str):
            raise DatasetError(f"{where}: {field}.content must be a string, got {type(content).__name__}")
        if not content.strip():
            raise DatasetError(f"{where}: {field}.content is empty")
    if not any(message["role"] == "assistant" for message in messages):
        raise DatasetError(f"{where}: 'messages' has no assistant turn to train on")


def _source_files(source: str) -> list[Path]:
    if source == BUNDLED_SOURCE:
        return [bundled_dataset_path()]
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".jsonl")
        if not files:
            raise DatasetError(f"Dataset directory {path} holds no *.jsonl files")
        return files
    raise DatasetError(f"Dataset source {source!r} is not a file or directory (or {BUNDLED_SOURCE!r})")


def _records(files: list[Path]) -> Iterator[bytes]:
    for file in files:
        with file.open("rb") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{file}:{line_number}"
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise DatasetError(f"{where}: invalid JSON ({exc})") from None
                validate_record(record, where)
                yield orjson.dumps({"messages": record["messages"]})


def _identity(files: list[Path]) -> list[dict[str, Any]]:
    return [
        {"path": str(f.resolve()), "bytes": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns} for f in files
    ]


def resolve_dataset(source: str, workspace: str | Path) -> DatasetStats:
    """Validate ``source`` and write it to ``<workspace>/dataset/train.jsonl``; skip when unchanged."""
    files = _source_files(source)
    out_dir = Path(workspace) / c.DATASET_DIR
    target, manifest_path = out_dir / TRAIN_FILE, out_dir / MANIFEST_FILE
    identity = _identity(files)
    if target.exists() and manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("identity") == identity and manifest.get("sha256") == sha256_file(target):
            return DatasetStats(**{**manifest["stats"], "reused": True})
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{TRAIN_FILE}.tmp"
    digest = hashlib.sha256()
    records = size = 0
    try:
        with tmp.open("wb") as handle:
            for line in _records(files):
                line += b"\n"
                handle.write(line)
                digest.update(line)
                records += 1
                size += len(line)
        if records == 0:
            raise DatasetError(f"Dataset {source!r} has no records")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    stats = DatasetStats(str(target), source, records, size, digest.hexdigest())
    atomic_write_bytes(
        manifest_path, orjson.dumps({"identity": identity, "sha256": stats.sha256, "stats": stats.to_dict()})
    )
    return stats

"""Writers of small chat datasets in every supported format, shared by the dataset tests."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path


def chat(*turns, system=None):
    messages = [{"role": "system", "content": system}] if system else []
    for user, assistant in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages}


GOOD = chat(("Hi", "Hello!"))
ROWS = [chat((f"question {i}", f"answer {i}"), system="Be brief." if i % 2 else None) for i in range(5)]


def jsonl_bytes(rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def write_jsonl(path: Path, rows) -> Path:
    path.write_bytes(jsonl_bytes(rows))
    return path


def write_json_array(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows, indent=2))
    return path


def parquet_bytes(rows) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = list(dict.fromkeys(k for r in rows for k in r))  # from_pylist would take the first row's only
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]), sink, row_group_size=2)
    return sink.getvalue()


def write_parquet(path: Path, rows) -> Path:
    path.write_bytes(parquet_bytes(rows))
    return path


def write_csv(path: Path, rows, *, fields=None) -> Path:
    fields = fields or list(rows[0])
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
    return path


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data)


def zstd_bytes(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


def read_output(workspace: Path) -> list[dict]:
    return [json.loads(line) for line in (workspace / "dataset" / "train.jsonl").read_text().splitlines()]


def assert_nothing_written(workspace: Path) -> None:
    out = workspace / "dataset"
    assert not (out / "train.jsonl").exists()
    assert not (out / "manifest.json").exists()
    assert not list(out.glob(".*")) if out.exists() else True

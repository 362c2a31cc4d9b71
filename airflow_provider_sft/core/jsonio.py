"""JSON for the files the training pod reads and writes: orjson where installed, else the stdlib.

The pod program (:mod:`airflow_provider_sft.core.backends.kubernetes.program`) carries the core
modules into an image that has Python, torch and instructlab-training, not orjson. Those modules
use these functions; on the Airflow side they are orjson, whose speed dataset resolution needs.
Both libraries raise a subclass of :class:`ValueError` for bad JSON: catch that.
"""

from __future__ import annotations

from typing import Any

try:
    import orjson
except ImportError:  # the training image
    orjson = None  # type: ignore[assignment]
    import json


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    if orjson is not None:
        return orjson.loads(data)
    return json.loads(bytes(data) if isinstance(data, memoryview) else data)


def dumps(value: Any, *, indent: bool = False) -> bytes:
    """Compact UTF-8 JSON (two-space indented with ``indent``), as orjson writes it."""
    if orjson is not None:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2 if indent else 0)
    if indent:
        return json.dumps(value, indent=2, ensure_ascii=False).encode()
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

"""The small chat dataset shipped inside the package (see scripts/make_chat_dataset.py)."""

from __future__ import annotations

import functools
import tempfile
from importlib import resources
from pathlib import Path

BUNDLED_DATASET_NAME = "chat_sft_sample.jsonl"


@functools.cache
def bundled_dataset_path() -> Path:
    """Path of the bundled chat dataset (messages format, one conversation per line).

    Inside the pod program's zip the resource is not a file: it is copied once into the
    temporary directory (an emptyDir in the pod).
    """
    resource = resources.files("airflow_provider_sft.core") / "data" / BUNDLED_DATASET_NAME
    path = Path(str(resource))
    if path.is_file():
        return path
    copy = Path(tempfile.mkdtemp(prefix="sft-bundled-")) / BUNDLED_DATASET_NAME
    copy.write_bytes(resource.read_bytes())
    return copy

"""The small chat dataset shipped inside the package (see scripts/make_chat_dataset.py)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BUNDLED_DATASET_NAME = "chat_sft_sample.jsonl"


def bundled_dataset_path() -> Path:
    """Path of the bundled chat dataset (messages format, one conversation per line)."""
    return Path(str(resources.files("airflow_provider_sft.core") / "data" / BUNDLED_DATASET_NAME))

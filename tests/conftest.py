"""Shared fixtures: a tiny locally built model (no downloads) and offline, single-thread settings."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# One torch thread: with two, any busy neighbour process slows CPU training several times over.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]

# The KFP shim's tests run in their own venv (.venv-kfp: kfp's pins conflict with Airflow's).
collect_ignore = [] if importlib.util.find_spec("kfp") else ["kfp"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny Llama + tokenizer trained on the bundled dataset's text, built once per session."""
    from airflow_provider_sft.core.training.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(autouse=True)
def _hf_home(tmp_path, monkeypatch):
    # datasets/transformers caches go to a temp dir, never the user's home.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))

"""The CPU loop's full state: what it saves so a new attempt continues exactly where it stopped.

``full_state/epoch_<E>/`` holds the model (``model/``, safetensors), the optimizer and
scheduler state, the torch and Python random states, and ``training_metadata.json`` with
``current_epoch``, ``samples_seen`` and, for a state saved mid-epoch, ``global_step`` (the last
step it holds), the keys instructlab-training writes. A state without ``global_step`` was saved
at the end of its epoch. The directory is written under a temporary name and renamed, so a
reader sees a whole state or none; the metadata is written last all the same, as instructlab
does, which is what :func:`resume.state_problem` checks.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.training.resume import METADATA_FILE, read_metadata

MODEL_DIR = "model"
OPTIMIZER_FILE = "optimizer.bin"
SCHEDULER_FILE = "scheduler.bin"
RNG_FILE = "rng_state.pth"


def write_full_state(
    target: Path, *, model: Any, optimizer: Any, scheduler: Any, metadata: dict[str, Any]
) -> None:
    """Write every part of the state into ``target`` (an empty directory), the metadata last."""
    import torch

    model.save_pretrained(target / MODEL_DIR, safe_serialization=True)
    torch.save(optimizer.state_dict(), target / OPTIMIZER_FILE)
    torch.save(scheduler.state_dict(), target / SCHEDULER_FILE)
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, target / RNG_FILE)
    (target / METADATA_FILE).write_bytes(jsonio.dumps(metadata))


def restore_full_state(state_dir: Path, *, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Load the optimizer, scheduler and random states of ``state_dir`` (the model is loaded from
    its ``model/`` by the caller, before the optimizer is built on it); its metadata."""
    import torch

    optimizer.load_state_dict(torch.load(state_dir / OPTIMIZER_FILE, weights_only=True))
    scheduler.load_state_dict(torch.load(state_dir / SCHEDULER_FILE, weights_only=True))
    rng = torch.load(state_dir / RNG_FILE, weights_only=True)
    torch.set_rng_state(rng["torch"])
    random.setstate(_as_tuples(rng["python"]))
    return read_metadata(state_dir / METADATA_FILE)


def _as_tuples(value: Any) -> Any:
    """``random.setstate`` wants the tuples ``getstate`` gave; a round trip may give lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value

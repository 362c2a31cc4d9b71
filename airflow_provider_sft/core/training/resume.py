"""What a new attempt of a run starts from: the newest complete saved state of the same run, or nothing.

instructlab-training loads the highest-numbered ``full_state/epoch_<N>/`` it finds in its output
directory, unconditionally: a state written in part, or by a run with other settings, would crash
it or, worse, be trained on. So node 0 decides before any node trains, and removes what must not
be loaded:

* **identity** (:func:`run_identity`): the settings that change what training computes, the
  prepared data's fingerprint, the base model (a local directory by its files' sizes and times,
  a Hub id by the cached revision), the node and process counts, and the versions of this package
  and of instructlab-training. Node 0 writes it as :data:`IDENTITY_FILE` before the first step.
  It lies beside ``full_state/``, not inside: instructlab parses every name inside as
  ``epoch_<N>`` (``int(name.rsplit("_")[-1])``) and would crash on a ``run.json``.
* **completeness** (:func:`state_problem`): instructlab writes ``training_metadata.json`` last,
  in place, and an on-demand save rewrites an existing ``epoch_<E>``: a state is complete when
  its metadata reads and no file in the directory is newer than it.

``resume="auto"`` continues from the newest complete state of the same identity; ``"never"``
starts clean. Whatever happens is one line (:attr:`ResumeDecision.line`), and a refusal names
what differs, never a value (a path, a secret, a piece of data). On a resume the metrics JSONL
loses the step records after the resumed step and gains one marker line (:func:`repair_metrics`),
so the curve has no duplicate step, and ``hf_format/samples_<N>/`` written after it are removed
(the resumed run writes them again on the same schedule).

Standard library only at import (torch is imported to read instructlab's pickled metadata):
the pod program carries this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.files import atomic_write_bytes, remove_owned

RESUME_AUTO = "auto"
RESUME_NEVER = "never"
RESUME_CHOICES = (RESUME_AUTO, RESUME_NEVER)
IDENTITY_FILE = "full_state.run.json"
METADATA_FILE = "training_metadata.json"
#: What an earlier attempt leaves in the run directory and a clean start removes.
EARLIER_ATTEMPT_STATE = (c.FULL_STATE_DIR, IDENTITY_FILE, c.HF_FORMAT_DIR, c.METRICS_FILE)
#: The parameters that change what training computes (not where it writes, nor how often it saves).
IDENTITY_PARAMS = (
    "base_model",
    "max_seq_len",
    "max_tokens_per_gpu",
    "num_epochs",
    "effective_batch_size",
    "learning_rate",
    "lr_scheduler",
    "lr_warmup_steps",
    "seed",
    "fsdp_sharding_strategy",
    "use_liger",
    "validation_split",  # the held-out samples are not trained on (validation_frequency changes nothing)
)
_STATE_DIR = re.compile(r"^epoch_(\d+)$")


def checked_resume(value: Any, *, field: str = "resume") -> str:
    """``"auto"`` or ``"never"``; anything else is an error naming ``field``."""
    if value not in RESUME_CHOICES:
        raise InvalidParameterError(
            {field: f"must be one of {', '.join(map(repr, RESUME_CHOICES))}, got {value!r}"}
        )
    return value


# --- identity ------------------------------------------------------------------------------------


def _package_version() -> str:
    import airflow_provider_sft

    return airflow_provider_sft.__version__


def _instructlab_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("instructlab-training")
    except PackageNotFoundError:
        return "not installed"


def data_fingerprint(processed_dir: str | Path, dataset_path: str | Path) -> str:
    """The prepared data's fingerprint (``prepared.json``: dataset, tokenizer, max_seq_len), else the dataset's sha256."""
    from airflow_provider_sft.core.files import sha256_file
    from airflow_provider_sft.core.training.prepare import PREPARED_FILE

    try:
        prepared = jsonio.loads((Path(processed_dir) / PREPARED_FILE).read_bytes())
        return "prepared:" + hashlib.sha256(jsonio.dumps(prepared["fingerprint"])).hexdigest()
    except (OSError, ValueError, KeyError, TypeError):
        return "dataset:" + sha256_file(dataset_path)


def model_fingerprint(base_model: str, env: Mapping[str, str] = os.environ) -> str:
    """Something cheap that changes when the base model's weights change.

    A local directory: the relative path, size and modification time of each of its files (a
    rewritten weight file changes its time; reading gigabytes of weights per attempt would not
    be cheap). A Hub id: the revision the local Hub cache resolved ``main`` to, if any (the data
    step fetched the model's tokenizer files into that cache just before, so attempts agree).
    """
    local = Path(base_model)
    if local.is_dir():
        digest = hashlib.sha256()
        for path in sorted(local.rglob("*")):
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(local).parts):
                stat = path.stat()
                digest.update(f"{path.relative_to(local)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return "files:" + digest.hexdigest()
    from huggingface_hub.constants import HF_HUB_CACHE  # where the data step fetched its tokenizer

    hub_cache = Path(env.get("HF_HUB_CACHE") or HF_HUB_CACHE)
    ref = hub_cache / f"models--{base_model.replace('/', '--')}" / "refs" / "main"
    try:
        return "revision:" + ref.read_text().strip()
    except OSError:
        return "revision:unknown"


def run_identity(
    params: Any,
    *,
    processed_dir: str | Path,
    dataset_path: str | Path,
    num_nodes: int,
    processes_per_node: int,
    env: Mapping[str, str] = os.environ,
) -> dict[str, Any]:
    """What makes a saved state this run's: compared field by field (see :func:`identity_differences`)."""
    values = params.to_json_dict()
    return {
        **{name: values[name] for name in IDENTITY_PARAMS},
        "num_nodes": num_nodes,
        "processes_per_node": processes_per_node,
        "data": data_fingerprint(processed_dir, dataset_path),
        "base_model_weights": model_fingerprint(params.base_model, env),
        "airflow_provider_sft": _package_version(),
        "instructlab_training": _instructlab_version(),
    }


def identity_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The names of the identity's fields that differ (never their values: a path, data)."""
    return sorted(name for name in current if saved.get(name) != current[name])


# --- saved states ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedState:
    """One complete ``full_state/epoch_<E>/`` and where training stood when it was saved."""

    path: Path
    epoch: int  # the epoch it was saved in
    samples_seen: int
    global_step: int | None  # None: saved at the end of ``epoch`` (instructlab's epoch-end state)
    saved_at: float  # its metadata's modification time

    @property
    def label(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"


def read_metadata(path: Path) -> dict[str, Any]:
    """``training_metadata.json``: JSON from the CPU loop, a torch pickle from instructlab (despite its name)."""
    data = path.read_bytes()
    try:
        metadata = jsonio.loads(data)
    except ValueError:
        import io

        import torch

        metadata = torch.load(io.BytesIO(data), weights_only=True)
    if not isinstance(metadata, dict) or not isinstance(metadata.get("samples_seen"), int):
        raise ValueError("no samples_seen")
    return metadata


def state_problem(state_dir: Path) -> str | None:
    """Why ``state_dir`` is not a complete state, or None when it is."""
    metadata = state_dir / METADATA_FILE
    try:
        written = metadata.stat().st_mtime_ns
        read_metadata(metadata)
    except FileNotFoundError:
        return f"it has no {METADATA_FILE} (written last)"
    except Exception as exc:  # a torn pickle raises whatever the unpickler meets
        return f"its {METADATA_FILE} cannot be read ({type(exc).__name__})"
    newer = sorted(
        str(path.relative_to(state_dir))
        for path in state_dir.rglob("*")
        if path != metadata and path.stat().st_mtime_ns > written
    )
    if newer:
        return f"{newer[0]} is newer than its {METADATA_FILE} (written in part)"
    return None


def load_state(state_dir: Path) -> SavedState:
    metadata_path = state_dir / METADATA_FILE
    metadata = read_metadata(metadata_path)
    step = metadata.get("global_step")
    return SavedState(
        path=state_dir,
        epoch=int(metadata.get("current_epoch", _epoch_of(state_dir.name))),
        samples_seen=metadata["samples_seen"],
        global_step=step if isinstance(step, int) else None,
        saved_at=metadata_path.stat().st_mtime,
    )


# --- the metrics JSONL ---------------------------------------------------------------------------


def _after(row: Any, state: SavedState) -> bool:
    """Whether a metrics line records a step the saved state does not hold (to be trained again)."""
    if not isinstance(row, dict) or not isinstance(row.get("step"), int):
        return False
    if state.global_step is not None:
        return row["step"] > state.global_step
    return isinstance(row.get("epoch"), int) and row["epoch"] > state.epoch


def repair_metrics(path: Path, state: SavedState, saved_by: str) -> int:
    """Drop the step records after ``state`` (and torn lines), append the resume marker; the lines dropped.

    The steps after the saved state are trained again: without this they would appear twice. The
    marker has no loss key, so the metrics reader and the progress follower skip it.
    """
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        lines = []
    kept, dropped, last_step = [], 0, 0
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)  # the stdlib reads NaN, which instructlab may write
        except ValueError:
            dropped += 1
            continue
        if _after(row, state):
            dropped += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            last_step = max(last_step, row["step"])
        kept.append(line)
    marker = {
        "resumed": True,
        "step": state.global_step if state.global_step is not None else last_step,
        "samples_seen": state.samples_seen,
        "epoch": state.epoch,
        "state": state.path.name,
        "attempt": saved_by,
    }
    kept.append(jsonio.dumps(marker))
    atomic_write_bytes(path, b"\n".join(kept) + b"\n")
    return dropped


def _drop_later_checkpoints(out: Path, state: SavedState) -> None:
    """``hf_format/samples_<N>/`` past the state: the resumed run writes them again on the same schedule."""
    checkpoints = out / c.HF_FORMAT_DIR
    for checkpoint in checkpoints.iterdir() if checkpoints.is_dir() else ():
        seen = checkpoint.name.removeprefix(c.SAMPLES_CHECKPOINT_PREFIX)
        if seen.isdigit() and int(seen) > state.samples_seen:
            remove_owned(checkpoint, checkpoints, field="output_dir")


# --- the decision --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResumeDecision:
    """What this attempt starts from (``state`` None: from the base model) and the one line that says so."""

    state: SavedState | None
    line: str
    saved_by: str = ""


def start_clean(output_dir: Path) -> list[str]:
    """Remove an earlier attempt's training state; the names removed."""
    return [
        name
        for name in EARLIER_ATTEMPT_STATE
        if remove_owned(output_dir / name, output_dir, field="output_dir")
    ]


def _clean(output_dir: Path, why: str) -> ResumeDecision:
    removed = start_clean(output_dir)
    return ResumeDecision(
        None, f"starting clean: {why}" + (f"; removed {', '.join(removed)}" if removed else "")
    )


def _read_identity(output_dir: Path) -> dict[str, Any] | None:
    try:
        identity = jsonio.loads((output_dir / IDENTITY_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    return identity if isinstance(identity, dict) and isinstance(identity.get("identity"), dict) else None


def _saved_by(attempts: list[dict[str, Any]], state: SavedState) -> str:
    """The attempt that saved ``state``: the last one that started before its metadata was written."""
    before = [
        a for a in attempts if isinstance(a.get("started"), (int, float)) and a["started"] <= state.saved_at
    ]
    return str(before[-1].get("attempt") or "-") if before else "-"


def _state_index(state: SavedState) -> int:
    return _epoch_of(state.path.name)


def _epoch_of(name: str) -> int:
    """The number of a state directory ``epoch_<N>`` (callers only pass names that matched)."""
    match = _STATE_DIR.match(name)
    if match is None:
        raise ValueError(f"not a full state directory name: {name!r}")
    return int(match[1])


def newest_complete_state(full_state: Path, *, since: float = 0.0) -> SavedState | None:
    """The newest complete state in ``full_state/`` whose metadata was written after ``since``; reads only."""
    entries = full_state.iterdir() if full_state.is_dir() else ()
    states = []
    for entry in entries:
        if entry.is_dir() and _STATE_DIR.match(entry.name) and state_problem(entry) is None:
            try:
                states.append(load_state(entry))
            except (OSError, ValueError, KeyError, TypeError):
                continue
    states = [s for s in states if s.saved_at >= since]
    return max(states, key=lambda s: (_state_index(s), s.samples_seen), default=None)


def _sort_states(full_state: Path) -> tuple[list[SavedState], list[str]]:
    """Complete states, newest first, after removing what instructlab must not load; the removals, in words."""
    complete, removed = [], []
    for entry in sorted(full_state.iterdir()):
        is_state = entry.is_dir() and _STATE_DIR.match(entry.name)
        problem = state_problem(entry) if is_state else "not an epoch_<N> state"
        if problem is None:
            try:
                complete.append(load_state(entry))
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                problem = f"its metadata is not usable ({type(exc).__name__})"
        remove_owned(entry, full_state, field="output_dir")
        removed.append(f"{entry.name} ({problem})")
    complete.sort(key=lambda s: (_state_index(s), s.samples_seen), reverse=True)
    return complete, removed


def decide(
    output_dir: str | Path,
    identity: Mapping[str, Any],
    *,
    resume: str,
    attempt: str,
    now: float | None = None,
) -> ResumeDecision:
    """Node 0, before any node trains: keep the newest complete state of this run, or start clean.

    Removes what must not be loaded (incomplete, foreign or other-identity states); on a resume,
    repairs the metrics and drops the checkpoints past the state. Records this attempt (and when
    it started, which tells later attempts who saved a state) in :data:`IDENTITY_FILE`.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = {"attempt": attempt or "-", "started": time.time() if now is None else now}
    decision = _decide(out, identity, resume)
    earlier = (_read_identity(out) or {}).get("attempts", []) if decision.state is not None else []
    if decision.state is not None:
        repair_metrics(out / c.METRICS_FILE, decision.state, decision.saved_by)
        _drop_later_checkpoints(out, decision.state)
    atomic_write_bytes(
        out / IDENTITY_FILE,
        jsonio.dumps({"identity": dict(identity), "attempts": [*earlier, started]}, indent=True),
    )
    return decision


def _decide(out: Path, identity: Mapping[str, Any], resume: str) -> ResumeDecision:
    if resume == RESUME_NEVER:
        return _clean(out, 'resume="never"')
    full_state = out / c.FULL_STATE_DIR
    if not full_state.is_dir() or not any(full_state.iterdir()):
        return _clean(out, "no saved state of an earlier attempt")
    saved = _read_identity(out)
    if saved is None:
        return _clean(out, f"the saved state has no readable {IDENTITY_FILE}: foreign, never resumed")
    if differ := identity_differences(saved["identity"], identity):
        return _clean(out, f"the saved state is of another run: {', '.join(differ)} differ")
    states, removed = _sort_states(full_state)
    if not states:
        return _clean(out, "no complete saved state: " + "; ".join(removed))
    state = states[0]
    saved_by = _saved_by(saved.get("attempts", []), state)
    step = "its end" if state.global_step is None else f"step {state.global_step}"
    return ResumeDecision(
        state,
        f"resuming from {state.label}: epoch {state.epoch} at {step}, {state.samples_seen} samples seen, "
        f"saved by attempt {saved_by}" + (f"; removed {'; '.join(removed)}" if removed else ""),
        saved_by,
    )

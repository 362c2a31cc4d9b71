"""Pick the final checkpoint a run wrote and publish it atomically as ``final_model``.

The checkpoint is chosen by what training wrote, never by modification time:
``hf_format/last_epoch`` (instructlab's keep-last-only mode) or else the highest
``hf_format/samples_<N>``. A checkpoint counts only when it is complete: its
``config.json`` parses and every weight file is whole (safetensors headers
read, sizes match, shards of an index all present). Temporary directories
(``.name.tmp``) are never candidates.

Publishing builds the copy in a temporary sibling directory (hard links when on
the same filesystem, copies otherwise), writes a sha256 manifest, then renames
it into place: a crash at any point leaves either the previous ``final_model``
or none, never a partial one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.errors import ExportError, InvalidParameterError
from airflow_provider_sft.core.files import checked_target, make_readable, remove_owned, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    model_path: str
    source_checkpoint: str
    files: int
    bytes: int
    linked: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _safetensors_complete(path: Path) -> bool:
    """A safetensors file is whole when its header parses and the data it describes is all there."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len > size - 8:
                return False
            header = json.loads(handle.read(header_len))
    except (OSError, struct.error, ValueError):
        return False
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    return 8 + header_len + max(ends, default=0) == size


def checkpoint_problem(directory: Path) -> str | None:
    """Why ``directory`` is not a complete HF checkpoint, or None when it is."""
    try:
        json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return "config.json is missing or unreadable"
    index = directory / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError):
            return f"{index.name} is unreadable"
        weights = [directory / shard for shard in sorted(shards)]
    else:
        weights = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("pytorch_model*.bin"))
    if not weights:
        return "no weight files"
    for weight in weights:
        if not weight.exists():
            return f"{weight.name} is missing"
        if weight.suffix == ".safetensors" and not _safetensors_complete(weight):
            return f"{weight.name} is incomplete"
    return None


def _candidates(run_dir: Path) -> list[Path]:
    root = run_dir / c.HF_FORMAT_DIR
    if not root.is_dir():
        return []
    numbered: list[tuple[int, Path]] = []
    last_epoch: list[Path] = []
    for child in root.iterdir():
        if not child.is_dir() or child.name.startswith("."):
            continue
        if child.name == c.LAST_EPOCH_CHECKPOINT:
            last_epoch.append(child)
        elif child.name.startswith(c.SAMPLES_CHECKPOINT_PREFIX):
            suffix = child.name.removeprefix(c.SAMPLES_CHECKPOINT_PREFIX)
            if suffix.isdigit():
                numbered.append((int(suffix), child))
    return last_epoch + [path for _, path in sorted(numbered, reverse=True)]


def select_final_checkpoint(run_dir: str | Path) -> Path:
    """The newest complete checkpoint of a run; :class:`ExportError` if there is none."""
    run_dir = Path(run_dir)
    skipped: list[tuple[str, str]] = []
    for candidate in _candidates(run_dir):
        problem = checkpoint_problem(candidate)
        if problem is None:
            for name, why in skipped:
                log.warning("Skipped checkpoint %s: %s", name, why)
            return candidate
        skipped.append((candidate.name, problem))
    detail = (
        "; ".join(f"{name}: {why}" for name, why in skipped)
        or "no hf_format/samples_* or last_epoch directory"
    )
    raise ExportError(f"No complete checkpoint in {run_dir / c.HF_FORMAT_DIR} ({detail})")


def require_metrics_file(run_dir: str | Path) -> Path:
    """The run's metrics file, checked before anything is published: a model without the run's
    metrics (a crashed or foreign run directory) would be exported, and then the step fail."""
    path = Path(run_dir) / c.METRICS_FILE
    if not path.is_file():
        raise ExportError(
            f"The run's metrics file {path} does not exist: training wrote no metrics, so the run "
            "cannot be reported. Nothing was published"
        )
    return path


def _link_or_copy(source: Path, target: Path) -> bool:
    """Hard link when possible (same filesystem), else copy. Returns True when linked."""
    try:
        os.link(source, target)
        return True
    except OSError:
        shutil.copy2(source, target)
        return False


def _remove_stale_temporaries(destination: Path) -> None:
    for stale in destination.parent.glob(f".{destination.name}.*-*"):
        _discard(stale, destination)


def _discard(path: Path, destination: Path) -> None:
    """Remove a temporary sibling of ``destination`` (through the confinement helper), best effort."""
    with contextlib.suppress(OSError):
        remove_owned(path, destination.parent, field="model_dir")


def check_destination(source: Path, destination: str | Path) -> None:
    """The model replaces ``destination``: it may not hold the checkpoint, the run or the workspace."""
    target, checkpoint = Path(destination).resolve(), source.resolve()
    if target == checkpoint or target in checkpoint.parents or checkpoint in target.parents:
        raise InvalidParameterError(
            {
                "model_dir": f"{destination} resolves to {target}, which contains or is inside the checkpoint "
                f"{checkpoint} (the run directory, or the workspace above it): publishing the model there "
                "would delete the runs. Choose a directory of its own"
            }
        )


def export_model(
    run_dir: str | Path,
    destination: str | Path,
    *,
    workspace: str | Path | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    checkpoint: Path | None = None,
) -> ExportResult:
    """Publish the run's final checkpoint at ``destination`` with a sha256 manifest.

    ``destination`` passes :func:`~airflow_provider_sft.core.files.checked_target` first (not
    the workspace, another run, a system directory or a directory the provider did not make),
    then may not hold the checkpoint. Every file is readable by group and others: a serving
    pod under another UID loads the model. ``workspace`` defaults to the one the run lives in
    (``<workspace>/runs/<run>``). ``extra_files`` (name -> bytes: the model card) are written
    beside the checkpoint's files, replacing any of the same name, and listed in the manifest.
    ``checkpoint``: the one :func:`select_final_checkpoint` chose, when the caller already has it
    (it reads every candidate's weight headers).
    """
    run_dir = Path(run_dir)
    if workspace is None:
        workspace = run_dir.parent.parent if run_dir.parent.name == c.RUNS_DIR else run_dir.parent
    destination = checked_target(destination, field="model_dir", workspace=workspace, own_run_dir=run_dir)
    source = checkpoint or select_final_checkpoint(run_dir)
    check_destination(source, destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(destination)
    token = uuid.uuid4().hex[:8]
    staging = destination.parent / f".{destination.name}.tmp-{token}"
    try:
        staging.mkdir()
        manifest: dict[str, dict[str, Any]] = {}
        linked_all = True
        total = 0
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            relative = file.relative_to(source)
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            linked_all &= _link_or_copy(file, target)
            size = target.stat().st_size
            manifest[str(relative)] = {"sha256": sha256_file(target), "bytes": size}
            total += size
        for name, data in (extra_files or {}).items():
            target = staging / name
            target.unlink(missing_ok=True)  # never write through a hard link into the checkpoint
            target.write_bytes(data)
            total += len(data) - manifest.get(name, {}).get("bytes", 0)
            manifest[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        (staging / c.MODEL_MANIFEST_FILE).write_text(
            json.dumps({"source_checkpoint": str(source), "files": manifest}, indent=2, sort_keys=True)
        )
        for path in [staging, *staging.rglob("*")]:  # hard links share the checkpoint's mode: fix both
            make_readable(path)
        _swap_into_place(staging, destination, token)
    except BaseException as exc:
        _discard(staging, destination)
        if isinstance(exc, OSError):
            raise ExportError(f"Export of {source} to {destination} failed: {exc}") from exc
        raise
    # The export step reports it, once, in the task log (its caller's line); here for a debugger.
    log.debug("Exported %s to %s (%d files, %d bytes)", source, destination, len(manifest), total)
    return ExportResult(str(destination), str(source), len(manifest), total, linked_all)


def _swap_into_place(staging: Path, destination: Path, token: str) -> None:
    previous = destination.parent / f".{destination.name}.old-{token}"
    if destination.exists():
        os.replace(destination, previous)
    try:
        os.replace(staging, destination)
    except BaseException:
        if previous.exists():
            os.replace(previous, destination)
        raise
    _discard(previous, destination)


def verify_manifest(model_dir: str | Path) -> list[str]:
    """Files of an exported model whose sha256 no longer matches its manifest (empty = intact)."""
    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / c.MODEL_MANIFEST_FILE).read_text())["files"]
    return [name for name, entry in manifest.items() if sha256_file(model_dir / name) != entry["sha256"]]

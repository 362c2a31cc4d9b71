"""Small file helpers shared by the core: hashing, atomic writes, and the one path-confinement check.

Every file operation that deletes or replaces a directory the user named (a run directory, an
exported model) goes through :func:`owned_path`: the path, symlinks followed, must lie strictly
inside the directory the provider owns, so no run name or template value can reach above it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from airflow_provider_sft.core.errors import InvalidParameterError

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a hidden sibling, then rename: readers see the old file or the new one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


def owned_path(path: str | Path, owner: str | Path, *, field: str) -> Path:
    """``path`` (relative to ``owner`` if relative) resolved, strictly inside ``owner``.

    Raises :class:`InvalidParameterError` naming ``field`` when it is ``owner`` itself, outside
    it, or reaches outside through ``..`` or a symlink. Nothing is touched.
    """
    root = Path(owner).resolve()
    candidate = Path(path)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if resolved == root or root not in resolved.parents:
        raise InvalidParameterError(
            {
                field: f"{str(path)!r} resolves to {resolved}, which is not inside {root}: refusing to delete or replace it"
            }
        )
    return resolved


def remove_owned(path: str | Path, owner: str | Path, *, field: str) -> bool:
    """Delete ``path`` (a tree or a file) if it exists, after :func:`owned_path`; True if removed."""
    target = owned_path(path, owner, field=field)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
    else:
        return False
    return True

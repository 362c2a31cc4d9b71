"""Small file helpers shared by the core: hashing, atomic writes, and the one path-confinement check.

Every directory the provider writes under, replaces or deletes passes the checks here, and
nothing else decides what may be destroyed:

* :func:`checked_root`: a root the provider creates directories under (``workspace``, the
  KFP ``pvc_path``): never ``/``, a system directory (or inside ``/etc``, ``/usr``...) or a
  home root.
* :func:`checked_target`: a directory the provider replaces whole (``model_dir``): also
  never the workspace or a directory above it, ``<workspace>/runs``, or a directory inside
  another run's ``<workspace>/runs/<run>``; and when it exists, only one the provider made.
  The provider recognises its own models by their marker, ``sft_manifest.json`` (the sha256
  manifest every export writes); an empty directory holds nothing to lose and is accepted.
* :func:`owned_path` / :func:`remove_owned`: whatever is deleted lies strictly inside the
  directory that owns it (a run, the model's parent), symlinks followed, and is never a
  system directory; every ``rmtree``/``unlink`` of a tree goes through :func:`remove_owned`.

Each raises :class:`InvalidParameterError` naming the field before anything is touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.errors import InvalidParameterError

_CHUNK = 1 << 20
#: How the provider recognises a model directory it wrote (and may therefore replace).
PROVIDER_MARKER = c.MODEL_MANIFEST_FILE
#: Refused, and everything below them: the operating system's own trees.
SYSTEM_TREES = tuple(
    Path(p)
    for p in [
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/proc",
        "/run",
        "/sbin",
        "/sys",
        "/usr",
    ]
)
#: Refused themselves (a workspace may live below them): the root, shared roots, home roots.
SYSTEM_DIRS = tuple(
    Path(p)
    for p in [
        "/",
        "/home",
        "/root",
        "/Users",
        "/var",
        "/var/lib",
        "/var/log",
        "/var/tmp",
        "/tmp",
        "/opt",
        "/srv",
        "/mnt",
        "/media",
    ]
)
HOME_ROOTS = (Path("/home"), Path("/Users"))
#: File and directory modes an exported model gets: readable by a serving pod of another UID.
READABLE_FILE_BITS = 0o444
READABLE_DIR_BITS = 0o555


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a uniquely named hidden sibling, then rename: readers see the old file or the new one.

    The temporary's name is unique per call (``mkstemp``), so two writers racing on the same
    path each rename a whole file of their own; the last rename wins, never a mix. The result
    is ``0644``: these are small JSON files other users (a serving pod, the UI) read.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def make_readable(path: Path) -> None:
    """Add read (and, for directories, search) permission for group and others; never remove any."""
    mode = path.stat().st_mode
    os.chmod(path, mode | (READABLE_DIR_BITS if path.is_dir() else READABLE_FILE_BITS))


def make_group_writable(root: Path) -> None:
    """Give ``root``'s tree group write permission (directories setgid too, like an fsGroup volume).

    What the worker writes in ``shared`` mode, a training pod of another user in the same group
    may have to replace: the prepared data, when its fingerprint no longer matches.
    """
    for path in [root, *root.rglob("*")]:
        with contextlib.suppress(OSError):  # not ours to change on some volumes
            mode = path.stat().st_mode
            path.chmod(mode | (0o2070 if path.is_dir() else 0o060))


def _refuse(field: str, path: str | Path, resolved: Path, why: str) -> InvalidParameterError:
    shown = f"{str(path)!r}" + ("" if str(path) == str(resolved) else f" (resolves to {resolved})")
    return InvalidParameterError({field: f"{shown} {why}: refused, nothing was touched"})


def system_tree(resolved: Path) -> Path | None:
    """The system tree (``/etc``, ``/usr``...) ``resolved`` lies in, or None."""
    return next((tree for tree in SYSTEM_TREES if resolved == tree or tree in resolved.parents), None)


def _system_problem(resolved: Path) -> str | None:
    """Why ``resolved`` is a directory the provider must never write into as a root or destroy."""
    if resolved in SYSTEM_DIRS:
        return "is the filesystem root, a system directory or a home root"
    tree = system_tree(resolved)
    if tree is not None:
        return f"is inside the system directory {tree}"
    if resolved.parent in HOME_ROOTS or resolved == Path(os.path.expanduser("~")).resolve():
        return "is a home directory"
    return None


def _resolved(path: str | Path, base: str | Path | None = None) -> Path:
    candidate = Path(path)
    if not candidate.is_absolute() and base is not None:
        candidate = Path(base) / candidate
    return candidate.resolve()


def checked_root(path: str | Path, *, field: str) -> Path:
    """``path`` resolved, refused when it is ``/``, a system directory or a home directory.

    For the directories the provider creates its own directories under (``workspace``,
    ``pvc_path``): ``workspace="/"`` would otherwise create ``/runs``.
    """
    if not str(path).strip():
        raise InvalidParameterError({field: "is empty: give the directory the provider may write under"})
    resolved = _resolved(path)
    problem = _system_problem(resolved)
    if problem:
        raise _refuse(field, path, resolved, problem)
    return resolved


def checked_target(
    path: str | Path,
    *,
    field: str,
    workspace: str | Path,
    own_run_dir: str | Path | None = None,
    check_contents: bool = True,
) -> Path:
    """``path`` (relative: to ``workspace``) resolved, if the provider may replace it whole.

    Refused: a system or home directory, the workspace or a directory above it, the runs
    directory, a run's directory itself, anything inside a run other than ``own_run_dir``
    (before training every run is another run), and, with ``check_contents`` (the path is
    on this machine), an existing file or a non-empty directory without :data:`PROVIDER_MARKER`.
    """
    if not str(path).strip():
        raise InvalidParameterError({field: "is empty: give the directory to publish into"})
    root = checked_root(workspace, field="workspace")
    resolved = _resolved(path, root)
    problem = _system_problem(resolved)
    runs = root / c.RUNS_DIR
    own = _resolved(own_run_dir) if own_run_dir is not None else None
    if problem is None and (resolved == root or resolved in root.parents):
        problem = f"is the workspace {root} or contains it"
    elif problem is None and resolved == runs:
        problem = f"is the runs directory {runs}"
    elif problem is None and runs in resolved.parents:
        run = runs / resolved.relative_to(runs).parts[0]
        if resolved == run:
            problem = f"is the run directory {run}"
        elif run != own:
            problem = f"is inside another run's directory {run}"
    if problem is None and check_contents:
        problem = _foreign_contents(resolved)
    if problem:
        raise _refuse(field, path, resolved, problem)
    return resolved


def _foreign_contents(resolved: Path) -> str | None:
    if not resolved.exists():
        return None
    if not resolved.is_dir():
        return "exists and is not a directory"
    if (resolved / PROVIDER_MARKER).is_file() or not any(resolved.iterdir()):
        return None
    return (
        f"is an existing directory the provider did not create (it has no {PROVIDER_MARKER}); "
        "replacing it would delete its files. Choose a new or empty directory"
    )


def owned_path(path: str | Path, owner: str | Path, *, field: str) -> Path:
    """``path`` (relative to ``owner`` if relative) resolved, strictly inside ``owner``.

    Raises :class:`InvalidParameterError` naming ``field`` when it is ``owner`` itself, outside
    it, reaches outside through ``..`` or a symlink, or is a system directory. Nothing is touched.
    """
    root = Path(owner).resolve()
    resolved = _resolved(path, root)
    if resolved == root or root not in resolved.parents:
        raise _refuse(field, path, resolved, f"is not inside {root}")
    problem = _system_problem(resolved)
    if problem:
        raise _refuse(field, path, resolved, problem)
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

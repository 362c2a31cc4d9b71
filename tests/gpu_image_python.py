"""An interpreter that sees only what the GPU machine will have: its image's packages and the wheels
the GPU check carries (``scripts/gpu-requirements.txt``), taken from this venv.

It is the CPU-side stand-in of that machine for the GPU check's smoke test: a module the check
imports that is neither in the image nor carried is missing here too, as it would be there.
The image's packages are those the device notes list (``scripts/gpu_image.py``), each with what
it requires as installed here (the image has its packages' own requirements, whatever their
versions there). The versions are this venv's, not the image's: the wheels' own requirements
against the image's versions are checked by ``tests/unit/test_gpu_check.py``.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO_ROOT

REQUIREMENTS = REPO_ROOT / "scripts" / "gpu-requirements.txt"


def carried_names() -> set[str]:
    """The distributions ``scripts/gpu-requirements.txt`` carries."""
    names = set()
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip().rstrip("\\").strip()
        if line and not line.startswith("--"):
            names.add(canonicalize_name(re.split(r"[=<>!~ ]", line, maxsplit=1)[0]))
    return names


def _installed() -> dict[str, importlib.metadata.Distribution]:
    """This venv's distributions (only its site-packages: an import may put a vendored copy of one,
    such as setuptools' ``packaging``, on ``sys.path``)."""
    purelib = sysconfig.get_paths()["purelib"]
    return {
        canonicalize_name(d.metadata["Name"]): d for d in importlib.metadata.distributions(path=[purelib])
    }


def image_closure(image: set[str], installed: dict[str, importlib.metadata.Distribution]) -> set[str]:
    """``image`` and everything its packages require, as installed here (no extras)."""
    seen: set[str] = set()
    todo = [name for name in image if name in installed]
    while todo:
        name = todo.pop()
        if name in seen or name not in installed:
            continue
        seen.add(name)
        for text in installed[name].requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return seen


def image_site(site: Path) -> set[str]:
    """Fill ``site`` with symlinks to the image's and the carried distributions; which it holds."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        from gpu_image import IMAGE_PACKAGES
    finally:
        sys.path.pop(0)
    installed = _installed()
    names = image_closure(set(IMAGE_PACKAGES), installed) | (carried_names() & set(installed))
    purelib = Path(sysconfig.get_paths()["purelib"])
    for name in names:
        for file in installed[name].files or []:
            top = file.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth") or (site / top).exists():
                continue
            if (purelib / top).exists():
                os.symlink(purelib / top, site / top)
    return names


def image_environment(root: Path) -> tuple[list[str], dict[str, str], set[str]]:
    """A venv of this Python whose site-packages is :func:`image_site`'s, the clone on
    ``PYTHONPATH`` as gpu-check.sh puts it. A venv, not ``python -S``: the check's own child
    processes (the entrypoint, torchrun's workers) start ``sys.executable`` and must see the same."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    names = image_site(Path(purelib))
    # The console script the image's torch installed (run_training starts it by name).
    torchrun = venv / "bin" / "torchrun"
    torchrun.write_text(f"#!{python}\nimport sys\nfrom torch.distributed.run import main\nsys.exit(main())\n")
    torchrun.chmod(0o755)
    env = {
        "PATH": os.defpath,
        "HOME": str(root),
        "TMPDIR": str(root),
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    return [str(python)], env, names

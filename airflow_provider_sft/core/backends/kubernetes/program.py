"""The pod program: what the training pod runs, delivered without installing anything.

The node container runs with what its image has (Python, torch, instructlab-training and their
dependencies) and nothing else: no ``pip install`` at start, no network, any UID, ``HOME``
unwritable. So the program travels with the job. The core modules the pod needs go into one
zip file that Python runs as it is (``python program.pyz``, PEP 441), stored in a ConfigMap the
TrainJob owns, next to the JSON config of the run, and mounted read-only at
:data:`PROGRAM_DIR`. The Kubeflow SDK embeds a function's source in the container command for
the same reason; a zip keeps it one code base with the local backend, not a second copy.

The zip is built from this installed package, byte for byte reproducibly (fixed timestamps,
sorted entries), so its sha256 names the exact program a pod ran. It carries what
:data:`CARRIED` lists, and only that: the pod program (``core/pod/``), what it imports, and the
bundled dataset. A new module goes to pods only when it is added there, so the backends
(Kubernetes clients), the chart (plotly), the test-model builder and whatever comes next stay
on the Airflow side. A test holds the list to the program's imports, and runs the zip in an
interpreter that has only what the training image has.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import airflow_provider_sft

PROGRAM_DIR = "/opt/airflow-provider-sft"  # where the ConfigMap is mounted in the node container
PROGRAM_FILE = "program.pyz"
CONFIG_FILE = "config.json"
_PACKAGE = Path(airflow_provider_sft.__file__).parent
#: What the pod program is made of, relative to the package: packages (``/``: all their modules)
#: and single modules. The pod imports these and nothing else of the package.
CARRIED = (
    "__init__.py",
    "core/__init__.py",
    "core/clock.py",  # the node waits for node 0's data on it
    "core/constants.py",
    "core/errors.py",
    "core/files.py",
    "core/jsonio.py",
    "core/params.py",
    "core/quantity.py",
    "core/run.py",
    "core/sample_data.py",
    "core/data/",  # the bundled chat dataset (the ``bundled`` source)
    "core/dataset/",  # the ``resolve`` step
    "core/pod/",  # the program: entrypoint, steps, protocol
    "core/publish/__init__.py",  # the ``export`` step's upload to S3 or the Hub (not fetch.py: a consumer's)
    "core/publish/hub.py",
    "core/publish/manifest.py",
    "core/publish/s3.py",
    "core/results/__init__.py",
    "core/results/efficiency.py",  # tokens/s, MFU, GPU-hours: the summary line and the export step
    "core/results/export.py",  # the ``export`` step
    "core/results/metrics.py",
    "core/results/model_card.py",  # written into every exported model
    "core/training/__init__.py",
    "core/training/cpu_trainer.py",
    "core/training/data_processing.py",
    "core/training/data_report.py",
    "core/training/held_out.py",  # the validation split, as instructlab makes it
    "core/training/instructlab_command.py",
    "core/training/nodes.py",
    "core/training/prepare.py",  # the ``prepare`` step, and the pod's reuse of its output
    "core/training/cpu_state.py",  # the CPU loop's full state: save on SIGTERM, resume
    "core/training/preemption.py",  # SIGTERM: stop at the next step boundary
    "core/training/resume.py",  # what a new attempt starts from
    "core/training/progress.py",
    "core/training/trainer_status.py",  # node 0 pushes its progress to the TrainJob's status
)
_MAIN = b"""import sys

from airflow_provider_sft.core.pod.protocol import error_line, missing_module  # stdlib only

try:
    from airflow_provider_sft.core.pod.entrypoint import main
except ImportError as exc:  # the image lacks a module the program needs: one line that says which
    print(error_line(missing_module(exc)), flush=True)
    sys.exit(1)
sys.exit(main())
"""
# A ConfigMap holds at most 1 MiB (data and binaryData together, base64 counted).
CONFIGMAP_LIMIT = 1024 * 1024


def _members(package: Path = _PACKAGE) -> list[tuple[str, bytes]]:
    """The zip's entries: ``__main__.py``, then :data:`CARRIED` read from ``package``."""
    files: list[Path] = []
    for entry in CARRIED:
        path = package / entry
        if not path.exists():  # a module moved or renamed: the pod would fail to import it
            raise FileNotFoundError(f"the pod program lists {entry}, which {package} does not have")
        if entry.endswith("/"):
            files += [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        else:
            files.append(path)
    members = [(f"airflow_provider_sft/{p.relative_to(package).as_posix()}", p.read_bytes()) for p in files]
    return [("__main__.py", _MAIN), *sorted(members)]


@functools.cache
def program_zip() -> bytes:
    """The pod program as zip bytes, identical for identical sources."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in _members():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o444 << 16
            archive.writestr(info, data, compresslevel=9)
    return buffer.getvalue()


def program_digest() -> str:
    return hashlib.sha256(program_zip()).hexdigest()


def command(step: str) -> list[str]:
    """The node container's command for ``step`` (``train``, ``resolve`` or ``export``)."""
    return ["python", f"{PROGRAM_DIR}/{PROGRAM_FILE}", step, f"{PROGRAM_DIR}/{CONFIG_FILE}"]


def configmap_data(config_json: bytes) -> dict[str, Any]:
    """The ConfigMap's ``data`` and ``binaryData``: the program and the config beside it."""
    data = {
        "data": {CONFIG_FILE: config_json.decode()},
        "binaryData": {PROGRAM_FILE: base64.b64encode(program_zip()).decode()},
    }
    size = len(data["data"][CONFIG_FILE]) + len(data["binaryData"][PROGRAM_FILE])
    if size > CONFIGMAP_LIMIT:  # a config that large is a bug (data never goes in a config)
        raise ValueError(f"the pod program and its config take {size} bytes, over a ConfigMap's 1 MiB")
    return data

"""The files of an exported model, as its ``sft_manifest.json`` lists them: what every publisher sends.

The manifest is the export's record of the model (each file's sha256 and size); a publisher
sends exactly those files and the manifest itself, and checks them against it first, so a
model changed or damaged since the export is refused before anything is uploaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.errors import PublishError
from airflow_provider_sft.core.files import sha256_file


@dataclass(frozen=True)
class ModelFile:
    """One file of the exported model: its key under the run's prefix, where it is, what it holds."""

    name: str  # relative, POSIX: the object's key under <prefix>runs/<run>/
    path: Path
    sha256: str  # hex
    size: int


def model_files(model_path: Path, *, outcome: str = "nothing was uploaded") -> list[ModelFile]:
    """Every file the model's ``sft_manifest.json`` lists, then the manifest itself."""
    manifest_path = model_path / c.MODEL_MANIFEST_FILE
    try:
        listed = jsonio.loads(manifest_path.read_bytes())["files"]
        files = [
            ModelFile(str(name), model_path / str(name), str(entry["sha256"]), int(entry["bytes"]))
            for name, entry in sorted(listed.items())
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise PublishError(
            f"{model_path}: not an exported model (its {c.MODEL_MANIFEST_FILE} is unreadable: {error}); "
            f"{outcome}"
        ) from None
    for file in files:
        parts = PurePosixPath(file.name).parts
        if file.name.startswith("/") or "\\" in file.name or ".." in parts or not parts:
            raise PublishError(f"{model_path}: the manifest lists {file.name!r}; refused, {outcome}")
        if not file.path.is_file():
            raise PublishError(
                f"{model_path}: {file.name} is in the manifest but not in the model; {outcome}"
            )
        if file.path.stat().st_size != file.size:
            raise PublishError(
                f"{model_path}: {file.name} is {file.path.stat().st_size} bytes, the manifest says {file.size} "
                f"(changed since the export); {outcome}"
            )
    manifest = ModelFile(
        c.MODEL_MANIFEST_FILE, manifest_path, sha256_file(manifest_path), manifest_path.stat().st_size
    )
    return [*files, manifest]


def damaged_files(model_path: Path, *, outcome: str) -> list[str]:
    """The files of the model at ``model_path`` whose sha256 is not the manifest's (empty: whole).
    The manifest's names, presence and sizes are checked first (:func:`model_files`; its error
    ends with ``outcome``)."""
    return [
        file.name
        for file in model_files(model_path, outcome=outcome)
        if file.name != c.MODEL_MANIFEST_FILE and sha256_file(file.path) != file.sha256
    ]

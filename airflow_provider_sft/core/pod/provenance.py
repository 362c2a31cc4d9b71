"""What trained a run, as its training process records it in the run-facts line.

The model card must report what really trained the model, not what exports it (the export may
run weeks later, with a newer provider): so the training process writes the provider's version,
the sha256 of the program it runs, and its dataset's source and sha256 beside where it ran
(:func:`~airflow_provider_sft.core.results.efficiency.facts_record`), and the card reads them back.

The program's sha256 is the digest of the pod program's zip (``program.pyz``): in a pod, the
very file that runs; on the local backend, which runs the installed package, the digest of
the zip a pod would run from the same sources, which the backend computes and hands over in
:data:`PROGRAM_SHA256_ENV` (``core/backends/kubernetes/program.program_digest``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import airflow_provider_sft
from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.files import sha256_file

PROGRAM_SHA256_ENV = "SFT_PROGRAM_SHA256"


def program_sha256(env: Mapping[str, str] = os.environ) -> str | None:
    """The sha256 of the program this process runs; None when it cannot know (run by hand)."""
    archive = getattr(getattr(airflow_provider_sft, "__loader__", None), "archive", None)
    if archive:  # imported from the pod program's zip: hash the file itself
        return sha256_file(archive)
    return env.get(PROGRAM_SHA256_ENV) or None


def dataset_provenance(dataset_path: str, processed_dir: str) -> dict[str, Any]:
    """Where the training data came from (the resolved source, else its path) and its sha256.

    The sha256 is the one the data step just checked (``prepared.json``'s fingerprint, computed
    from this very file), read rather than computed again; a file without it is hashed here.
    """
    from airflow_provider_sft.core.dataset.resolve import MANIFEST_FILE  # beside the train.jsonl it made
    from airflow_provider_sft.core.training.prepare import PREPARED_FILE  # in the processed-data directory

    path = Path(dataset_path)
    source = str(path)
    # Resolved by the resolve step: the source it came from (s3://, hf://, a URL, bundled).
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        source = str(jsonio.loads((path.parent / MANIFEST_FILE).read_bytes())["identity"]["source"])
    sha256 = None
    try:
        prepared = jsonio.loads((Path(processed_dir) / PREPARED_FILE).read_bytes())
        sha256 = prepared["fingerprint"]["dataset_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        if path.is_file():
            sha256 = sha256_file(path)
    return {"source": source, "path": str(path), "sha256": sha256}


def run_provenance(dataset_path: str, processed_dir: str) -> dict[str, Any]:
    """The provenance keys of the run-facts line."""
    return {
        "provider_version": airflow_provider_sft.__version__,
        "program_sha256": program_sha256(),
        "dataset": dataset_provenance(dataset_path, processed_dir),
    }

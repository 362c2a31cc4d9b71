"""What trained a run: the program's sha256 (the zip a pod runs, or the digest the local backend
hands over), and the dataset's source and sha256 as the data steps recorded them."""

from __future__ import annotations

import json
import subprocess
import sys

from airflow_provider_sft.core.backends.kubernetes.program import program_digest, program_zip
from airflow_provider_sft.core.files import sha256_file
from airflow_provider_sft.core.pod.provenance import PROGRAM_SHA256_ENV, dataset_provenance, program_sha256


def test_a_process_running_the_pod_programs_zip_hashes_that_very_file(tmp_path):
    path = tmp_path / "program.pyz"
    path.write_bytes(program_zip())
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from airflow_provider_sft.core.pod.provenance import program_sha256; print(program_sha256({}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(path)], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == program_digest()  # what the ConfigMap carried, byte for byte


def test_the_installed_package_takes_the_digest_its_backend_hands_over():
    assert program_sha256({PROGRAM_SHA256_ENV: "f" * 64}) == "f" * 64
    assert program_sha256({}) is None  # run by hand: unknown, not guessed


def test_the_local_backend_hands_over_the_pod_programs_digest(tmp_path):
    from airflow_provider_sft.core.backends.local import LocalProcessBackend
    from airflow_provider_sft.core.params import SFTParams
    from airflow_provider_sft.core.run import TrainingRun

    run = TrainingRun(
        name="r",
        params=SFTParams.parse({"resource_gpu_per_worker": 0, "envs": {PROGRAM_SHA256_ENV: "spoofed"}}),
        dataset_path="d.jsonl",
        output_dir=str(tmp_path / "r"),
    )
    assert LocalProcessBackend().environment(run)[PROGRAM_SHA256_ENV] == program_digest()


def test_the_dataset_is_named_by_its_resolved_source_and_the_sha256_its_data_step_checked(tmp_path):
    dataset = tmp_path / "dataset" / "train.jsonl"
    dataset.parent.mkdir()
    dataset.write_text('{"messages": []}\n')
    (dataset.parent / "manifest.json").write_text(json.dumps({"identity": {"source": "hf://acme/chat"}}))
    processed = tmp_path / "data"
    processed.mkdir()
    (processed / "prepared.json").write_text(json.dumps({"fingerprint": {"dataset_sha256": "c" * 64}}))
    assert dataset_provenance(str(dataset), str(processed)) == {
        "source": "hf://acme/chat",
        "path": str(dataset),
        "sha256": "c" * 64,
    }
    (processed / "prepared.json").unlink()  # nothing recorded: the file itself is hashed
    (dataset.parent / "manifest.json").unlink()  # not resolved: its path is its source
    assert dataset_provenance(str(dataset), str(processed)) == {
        "source": str(dataset),
        "path": str(dataset),
        "sha256": sha256_file(dataset),
    }
    assert dataset_provenance(str(tmp_path / "gone.jsonl"), str(processed))["sha256"] is None

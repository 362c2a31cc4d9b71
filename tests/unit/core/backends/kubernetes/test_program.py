"""The pod program: what goes into the zip, that it is reproducible, and that it fits a ConfigMap."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import zipfile

from airflow_provider_sft.core.backends.kubernetes import program


def names() -> list[str]:
    return zipfile.ZipFile(io.BytesIO(program.program_zip())).namelist()


def test_the_program_carries_the_core_but_not_what_the_image_lacks():
    members = names()
    assert members[0] == "__main__.py"
    assert "airflow_provider_sft/core/entrypoint.py" in members
    assert "airflow_provider_sft/core/data/chat_sft_sample.jsonl" in members  # the bundled dataset
    assert not [m for m in members if "/backends/" in m or m.endswith(("chart.py", "tiny_model.py"))]
    assert not [m for m in members if "airflow_provider_sft/operators" in m or "__pycache__" in m]


def test_the_program_is_reproducible_and_fits_a_configmap():
    first = program.program_zip()
    program.program_zip.cache_clear()
    assert program.program_zip() == first  # byte for byte: its sha256 names the program
    data = program.configmap_data(b"{}")
    assert base64.b64decode(data["binaryData"]["program.pyz"]) == first
    assert len(data["binaryData"]["program.pyz"]) < program.CONFIGMAP_LIMIT / 4


def test_the_program_runs_from_its_zip_and_prints_its_usage(tmp_path):
    path = tmp_path / "program.pyz"
    path.write_bytes(program.program_zip())
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and "usage: entrypoint {train,resolve,export}" in done.stderr


def test_an_image_without_a_module_the_program_needs_gets_one_error_line(tmp_path):
    path = tmp_path / "program.pyz"
    path.write_bytes(program.program_zip())
    done = subprocess.run(
        [sys.executable, "-S", str(path), "train", "x.json"], capture_output=True, text=True
    )
    assert done.returncode == 1
    last = done.stdout.splitlines()[-1]
    assert last.startswith("ERROR: the training image lacks the Python module 'pydantic'"), last

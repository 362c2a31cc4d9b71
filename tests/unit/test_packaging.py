"""The package as pip installs it: every subpackage listed, and the example DAGs of the top-level
``dags/`` installed as ``airflow_provider_sft.example_dags``, where ``sft-demo`` finds them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from setuptools import find_namespace_packages

from tests.conftest import REPO_ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

EXAMPLE_DAG = REPO_ROOT / "dags" / "sft_pipeline.py"
#: How sft-demo finds its default DAGs folder, run as a fresh process.
FIND_EXAMPLE_DAGS = "from airflow_provider_sft.demo import EXAMPLE_DAGS; print(EXAMPLE_DAGS)"


def test_pyproject_lists_every_package_of_the_source_tree():
    """The packages are listed (dags/ is mapped into the package), so a new one must be added."""
    listed = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = find_namespace_packages(
        str(REPO_ROOT), include=["airflow_provider_sft*"], exclude=["*.__pycache__"]
    )
    assert sorted(listed) == sorted({*found, "airflow_provider_sft.example_dags"})


def test_sft_demo_finds_the_example_dag_from_another_directory(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", FIND_EXAMPLE_DAGS], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    found = Path(done.stdout.strip())
    assert found.is_absolute()
    assert (found / "sft_pipeline.py").read_bytes() == EXAMPLE_DAG.read_bytes()


def test_a_wheel_installs_the_example_dag_where_sft_demo_finds_it(tmp_path):
    source = tmp_path / "source"  # only what the wheel is built from: never the clone's build/
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    for name in ("airflow_provider_sft", "dags"):
        shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("airflow_provider_sft-*.whl")
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(installed)
    assert "airflow_provider_sft/example_dags/sft_pipeline.py" in names
    assert not [name for name in names if name.startswith("dags/")]  # no top-level "dags" package
    done = subprocess.run(
        [sys.executable, "-c", FIND_EXAMPLE_DAGS],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(installed), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(done.stdout.strip()) == installed / "airflow_provider_sft" / "example_dags"
    assert (
        installed / "airflow_provider_sft/example_dags/sft_pipeline.py"
    ).read_bytes() == EXAMPLE_DAG.read_bytes()

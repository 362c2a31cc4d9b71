"""The pod program: what goes into the zip, that it is reproducible, and that it fits a ConfigMap."""

from __future__ import annotations

import ast
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import airflow_provider_sft
from airflow_provider_sft.core.backends.kubernetes import program
from airflow_provider_sft.core.pod.protocol import parse_result
from tests.k8s.standin import image_entries

PACKAGE = Path(airflow_provider_sft.__file__).parent
#: Installed here for the Airflow side, absent from the training image.
NOT_IN_THE_IMAGE = (
    "airflow",
    "kubernetes",
    "kubernetes_asyncio",
    "plotly",
    "kfp",
    "tenacity",
    "fastapi",
    "orjson",
    "airflow_provider_sft",  # this package's own (editable) install: the pod has only the zip
)


def names() -> list[str]:
    return zipfile.ZipFile(io.BytesIO(program.program_zip())).namelist()


def test_the_program_carries_the_core_but_not_what_the_image_lacks():
    members = names()
    assert members[0] == "__main__.py"
    assert "airflow_provider_sft/core/pod/entrypoint.py" in members
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
    assert done.returncode == 2 and "usage: entrypoint {train,resolve,prepare,export}" in done.stderr


def test_an_image_without_a_module_the_program_needs_gets_one_error_line(tmp_path):
    path = tmp_path / "program.pyz"
    path.write_bytes(program.program_zip())
    done = subprocess.run(
        [sys.executable, "-S", str(path), "train", "x.json"], capture_output=True, text=True
    )
    assert done.returncode == 1
    last = done.stdout.splitlines()[-1]
    assert last.startswith("ERROR: the training image lacks the Python module 'pydantic'"), last


def test_a_new_module_is_carried_only_when_the_allow_list_names_it(tmp_path):
    package = tmp_path / "airflow_provider_sft"
    shutil.copytree(PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    for new in ("core/newthing.py", "core/training/newthing.py", "core/pod/newthing.py"):
        (package / new).write_text("import plotly\n")
    members = [name for name, _ in program._members(package)]
    assert "airflow_provider_sft/core/pod/entrypoint.py" in members
    assert "airflow_provider_sft/core/training/cpu_trainer.py" in members
    assert "airflow_provider_sft/core/newthing.py" not in members
    assert "airflow_provider_sft/core/training/newthing.py" not in members
    assert "airflow_provider_sft/core/pod/newthing.py" in members  # core/pod/ is the program: all of it


def test_a_listed_module_that_is_gone_fails_the_build_by_name(tmp_path):
    package = tmp_path / "airflow_provider_sft"
    shutil.copytree(PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    (package / "core/training/nodes.py").unlink()
    with pytest.raises(FileNotFoundError, match=r"lists core/training/nodes\.py"):
        program._members(package)


def _module_file(module: str) -> Path | None:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return next((p for p in (path / "__init__.py", path.with_suffix(".py")) if p.is_file()), None)


def _package_imports(path: Path) -> set[str]:
    """The package's modules ``path`` imports, at its top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("airflow_provider_sft") and _module_file(name)}


def test_the_program_carries_exactly_the_modules_it_imports():
    """The allow-list neither misses a module the program imports (a pod would fail on it) nor
    ships one it never imports."""
    todo = [f"airflow_provider_sft.core.pod.{p.stem}" for p in (PACKAGE / "core/pod").glob("*.py")]
    needed: set[Path] = set()
    while todo:
        module = todo.pop()
        parts = module.split(".")
        file = _module_file(module)
        if file in needed:
            continue
        needed.add(file)
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # its packages' __init__
        todo += _package_imports(file)
    carried = {name for name in names() if name.endswith(".py") and name != "__main__.py"}
    assert carried == {f"airflow_provider_sft/{p.relative_to(PACKAGE).as_posix()}" for p in needed}


@pytest.fixture(scope="module")
def image_python(tmp_path_factory) -> tuple[list[str], dict[str, str]]:
    """``python -S`` whose only packages are the training image's (see tests/k8s/standin.py)."""
    root = tmp_path_factory.mktemp("image")
    site = root / "site-packages"
    site.mkdir()
    installed = Path(sysconfig.get_paths()["purelib"])
    for entry in image_entries():
        os.symlink(installed / entry, site / entry)
    env = {"PATH": os.defpath, "HOME": str(root), "TMPDIR": str(root), "PYTHONPATH": str(site)}
    return [sys.executable, "-S"], env


def test_the_image_interpreter_lacks_what_the_airflow_side_has(image_python):
    python, env = image_python
    probe = (
        "import importlib.util, json, sys\n"
        "print(json.dumps([n for n in sys.argv[1:] if importlib.util.find_spec(n) is not None]))"
    )
    done = subprocess.run(
        [*python, "-c", probe, "torch", "instructlab", *NOT_IN_THE_IMAGE],
        env=env,
        cwd=env["HOME"],  # not the clone, whose package `-c` would find in the working directory
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout) == ["torch", "instructlab"]


def test_the_program_runs_a_step_with_only_what_the_image_has(image_python, tmp_path):
    python, env = image_python
    path = tmp_path / "program.pyz"
    path.write_bytes(program.program_zip())
    usage = subprocess.run([*python, str(path)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: entrypoint {train,resolve,prepare,export}" in usage.stderr
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"source": "bundled", "workspace": str(tmp_path / "ws"), "settings": {}}))
    done = subprocess.run(
        [*python, str(path), "resolve", str(config)], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = parse_result(done.stdout.splitlines())
    assert result["records"] == 235 and Path(result["path"]).is_file()
    assert done.stdout.splitlines()[0].startswith("[sft] ")


def test_an_image_without_boto3_ends_an_s3_publish_with_one_line(image_python, tmp_path):
    """The export pod of ``publish_to="s3://..."`` in an image without boto3 (the training image
    here: instructlab-training does not need it) says so in its last line, and names the fix."""
    from airflow_provider_sft.core import constants as c
    from tests.unit.core.results.test_export import write_checkpoint

    python, env = image_python
    run_dir = tmp_path / "ws" / c.RUNS_DIR / "run-1"
    write_checkpoint(run_dir / c.HF_FORMAT_DIR / "samples_8")
    (run_dir / c.METRICS_FILE).write_text(
        json.dumps({"step": 1, "epoch": 0, "avg_loss": 2.0, "lr": 1e-4}) + "\n"
    )
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "run_dir": str(run_dir),
                "model_dir": str(run_dir / c.FINAL_MODEL_DIR),
                "metrics_path": str(run_dir / c.METRICS_SUMMARY_FILE),
                "latest_path": str(tmp_path / "ws" / c.LATEST_FILE),
                "publish_to": "s3://models/chat/",
                "publish_settings": {"s3": {"endpoint_url": "http://127.0.0.1:9"}},
            }
        )
    )
    path = tmp_path / "program.pyz"
    path.write_bytes(program.program_zip())
    done = subprocess.run(
        [*python, str(path), "export", str(config)], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 1, done.stdout + done.stderr
    last = done.stdout.splitlines()[-1]
    assert last == (
        "ERROR: the training image lacks the Python module 'boto3' (No module named 'boto3'), which "
        "publish_to=s3://... (the export step uploads the model with it) needs: set image= to one that "
        "has it (deploy/Containerfile.training installs it)"
    ), done.stdout
    assert not (tmp_path / "ws" / c.LATEST_FILE).exists()  # nothing says the model was published

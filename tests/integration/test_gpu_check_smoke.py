"""The GPU check's phases on a CPU, in an interpreter that has only what the GPU machine will have
(its image's packages and the carried wheels: tests/gpu_image_python.py), with the tiny model.

Phase 1 runs to completion: our pipeline's steps on the local backend, whose entrypoint trains with
the CPU loop here (instructlab-training's main_ds needs CUDA). Phase 2 runs run_training for real
up to main_ds under torchrun, which stops at its first CUDA call: the check must then report the
bare phase as failed (run_training itself exits 0 on such a failure) and still write its report.
What only a GPU can show (main_ds training, the ratio, MFU) is left to the GPU machine.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess

import pytest

from tests.conftest import REPO_ROOT
from tests.gpu_image_python import carried_names, image_environment

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return image_environment(tmp_path_factory.mktemp("gpu-image"))


def test_the_stand_in_has_the_image_and_the_wheels_and_nothing_else(image):
    python, env, names = image
    assert {"torch", "transformers", "instructlab-training", "datasets", "pydantic"} <= names
    assert carried_names() <= names
    probe = "import importlib.util, sys; print([n for n in sys.argv[1:] if importlib.util.find_spec(n)])"
    wanted = ["torch", "instructlab", "airflow", "kubernetes", "plotly", "moto"]
    assert all(importlib.util.find_spec(name) for name in wanted)  # all of them are installed here
    done = subprocess.run(
        [*python, "-c", probe, *wanted], env=env, cwd=env["HOME"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "['torch', 'instructlab']"


def test_the_check_runs_its_phases_and_reports_them(image, tmp_path):
    python, env, _ = image
    wheels = tmp_path / "wheels"
    subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "gpu-wheels.sh"), str(wheels)], check=True, timeout=600
    )
    out = tmp_path / "out"
    done = subprocess.run(
        [
            *python,
            str(REPO_ROOT / "scripts" / "gpu_check.py"),
            str(out),
            "--size=tiny",
            "--budget=240",
            f"--wheels={wheels}",
            f"--work={tmp_path / 'work'}",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == {
        "gpu_check.json",
        "ours_metrics.jsonl",
        "bare_metrics.jsonl",  # run_training's hparams line, written before it launches torchrun
        "ours_train.log",
        "bare_train.log",
    }
    report = json.loads((out / "gpu_check.json").read_text())
    ours, bare = report["phases"]["ours"], report["phases"]["bare"]
    assert ours["status"] == "completed" and ours["steps"] == 4
    assert ours["detail"].endswith("final_model")
    assert ours["efficiency"]["tokens_per_second"] > 0
    assert (
        ours["efficiency"]["time_to_first_step_seconds"] > ours["first_step_after_process_start_seconds"] > 0
    )
    assert report["main_ds_argument_differences"] == {}
    assert report["environment"]["unmet_requirements"] == []
    assert [row["step"] for row in report["loss_curves"]] == [1, 2, 3, 4]
    assert all(row["ours"] > 0 and row["bare"] is None for row in report["loss_curves"])
    # run_training reached main_ds under torchrun, which needs CUDA; the check says the phase failed.
    assert bare["status"] == "failed" and bare["steps"] == 0
    assert bare["efficiency"]["tokens_per_second"] is None
    bare_log = (out / "bare_train.log").read_text()
    assert "main_ds.py" in bare_log and "ChildFailedError" in bare_log
    assert report["tokens_per_second_ratio"] is None and report["meets_target"] is None
    assert "ratio ours/bare n/a" in done.stdout

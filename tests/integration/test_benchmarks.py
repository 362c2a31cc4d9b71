"""Every benchmark still runs: each in its ``--smoke`` mode (tiny sizes, seconds), checked for
the ratio lines it exists to print.

A smoke run's numbers mean nothing (benchmarks/README.md has the measured ones). What rots
without this is the script itself: ``trigger_scale.py`` stopped running when ``pvc_name``
became required (every TrainJob it created was refused with a 422), and nothing noticed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.k8s import harness

BENCHMARKS = REPO_ROOT / "benchmarks"
NUMBER = r"\d+(?:\.\d+)?"
DATASET_CASES = ("local-jsonl", "local-parquet", "s3-jsonl", "s3-parquet")


def run_smoke(script: str, *args: str) -> str:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
        env=env,
    )
    assert result.returncode == 0, (
        f"{script} --smoke failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    )
    return result.stdout


def check_local_train(_tmp_path) -> None:
    out = run_smoke("local_train.py")
    assert re.search(rf"^  ours +{NUMBER} tokens/s$", out, re.M), out
    assert re.search(rf"^  Trainer +{NUMBER} tokens/s$", out, re.M), out
    assert re.search(rf"^  ratio ours/Trainer = {NUMBER}$", out, re.M), out


def check_dataset_resolve(tmp_path) -> None:
    out = run_smoke("dataset_resolve.py", "--data-dir", str(tmp_path))
    for case in DATASET_CASES:
        row = rf"^\| {case} \| {NUMBER} \| {NUMBER} \| {NUMBER}x \| \d+ \| \d+ \|$"
        assert re.search(row, out, re.M), f"no ratio row for {case}:\n{out}"


def check_trigger_scale(_tmp_path) -> None:
    if not harness.available():
        pytest.skip(harness.UNAVAILABLE)
    out = run_smoke("trigger_scale.py")
    for mode in ("shared", "per-job"):
        # the last waiter may see its job end a moment before the last write's answer: a negative time
        row = rf"^\| 3 \| {mode} \| {NUMBER} \| \d+ \| {NUMBER} \| \d+ \| -?{NUMBER} \| {NUMBER} \|$"
        assert re.search(row, out, re.M), f"no {mode} row:\n{out}"


def check_prepare_data(_tmp_path) -> None:
    out = run_smoke("prepare_data.py")
    for case in ("no prepared data", "prepared data"):
        assert re.search(rf"^  {case} +{NUMBER} s", out, re.M), out
    assert re.search(rf"^  saving -?{NUMBER} s, ratio before/after = {NUMBER}$", out, re.M), out
    for procs in ("1 proc", r"\d+ procs"):
        assert re.search(rf"^  ratio prepare_data/process_data\({procs}\) = {NUMBER}$", out, re.M), out
    assert "data.jsonl byte-identical in every run: yes" in out, out


def check_preemption_steps(_tmp_path) -> None:
    out = run_smoke("preemption_steps.py")
    assert "not a measurement" in out, out
    row = rf"^\| 10,000 samples, batch 128, 3 epochs \| 79 \| 71 \| 0 \(at most 1 in flight\) \| {NUMBER} \| 0\.00 \|"
    assert re.search(row, out, re.M), out
    assert re.search(
        rf"^10,000 samples, batch 128, 3 epochs: GPU-hours saved per preemption = {NUMBER}", out, re.M
    ), out


def check_eta_accuracy(_tmp_path) -> None:
    out = run_smoke("eta_accuracy.py")
    for run in ("steady speed", "half speed from 40%"):
        assert f"ETA accuracy, {run} (24 samples, 1 epochs x 3 steps, batch 8, 1 thread(s); " in out, out
    for point in (25, 50, 75):
        row = rf"^  at {point}%: ETA {NUMBER} s, real {NUMBER} s, error [+-](?:{NUMBER}|nan)% \(whole-run average "
        assert len(re.findall(row, out, re.M)) == 2, out
    assert (
        len(
            re.findall(
                rf"^  max \|error\| = {NUMBER}% \(whole-run average {NUMBER}%; target 15%\)$", out, re.M
            )
        )
        == 2
    )


def check_publish_s3(_tmp_path) -> None:
    out = run_smoke("publish_s3.py")
    for label in (
        "ours \\(publish_s3\\)",
        "ours without the checks",
        "upload_file each in turn",
        "ours, re-run",
    ):
        assert re.search(rf"^\| {label} \| {NUMBER} \| {NUMBER} \| {NUMBER}(?:, {NUMBER})* \|$", out, re.M), (
            out
        )
    assert re.search(rf"^speedup ours/baseline = {NUMBER}$", out, re.M), out


SMOKE_CHECKS = {
    "local_train.py": check_local_train,
    "dataset_resolve.py": check_dataset_resolve,
    "prepare_data.py": check_prepare_data,
    "trigger_scale.py": check_trigger_scale,  # on the real API server (tests/k8s/harness.py)
    "preemption_steps.py": check_preemption_steps,  # arithmetic: the figure in benchmarks/README.md
    "eta_accuracy.py": check_eta_accuracy,  # the demo training's ETA against the real remaining time
    "publish_s3.py": check_publish_s3,  # on moto's S3 server
}


def test_every_benchmark_has_a_smoke_check():
    assert sorted(path.name for path in BENCHMARKS.glob("*.py")) == sorted(SMOKE_CHECKS)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMOKE_CHECKS))
def test_benchmark_runs_in_smoke_mode_and_prints_its_ratios(script, tmp_path):
    SMOKE_CHECKS[script](tmp_path)

"""The GPU check (issue #27), all that can be checked without a GPU: the carried wheels complete the
GPU image and install into a clean Python 3.12 with --no-index, the model has the size it claims,
both runs give main_ds the same arguments (parsed by main_ds's own argparser), and the report's
figures from metrics files whose answers are known."""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import REPO_ROOT

SCRIPTS = REPO_ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))

import gpu_check  # noqa: E402
import gpu_check_args  # noqa: E402
import gpu_check_report  # noqa: E402
import gpu_image  # noqa: E402

REQUIREMENTS = SCRIPTS / "gpu-requirements.txt"


def listed() -> dict[str, tuple[str, str]]:
    """``{name: (version, sha256)}`` of scripts/gpu-requirements.txt."""
    text = re.sub(r"\\\n\s*", " ", REQUIREMENTS.read_text())
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([\w.-]+)==([\w.]+)\s+--hash=sha256:([0-9a-f]{64})", line)
            assert match, f"not one pinned version with its sha256: {line!r}"
            pins[gpu_image.canonicalize_name(match[1])] = (match[2], match[3])
    return pins


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """The wheels scripts/gpu-wheels.sh downloads (from PyPI, each sha256 checked by pip)."""
    target = tmp_path_factory.mktemp("whl-gpu")
    done = subprocess.run(
        ["bash", str(SCRIPTS / "gpu-wheels.sh"), str(target)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def test_the_list_pins_one_version_of_each_wheel_with_its_hash():
    pins = listed()
    assert "instructlab-training" in pins
    constraints = (REPO_ROOT / "constraints.txt").read_text()
    assert f"instructlab-training=={pins['instructlab-training'][0]}" in constraints  # the version we pin


def test_the_wheels_are_the_listed_ones_and_small_enough_to_carry(wheels):
    found = {}
    for path in wheels.glob("*.whl"):
        wheel = gpu_image.read_wheel(path)
        found[wheel.name] = (str(wheel.version), hashlib.sha256(path.read_bytes()).hexdigest())
    assert found == listed()
    size = sum(p.stat().st_size for p in wheels.glob("*.whl"))
    assert size < 16 * 2**20, f"{size} bytes: the working tree and the wheels travel in 64 MiB"


def test_the_wheels_complete_the_gpu_image(wheels):
    """Every requirement of every carried wheel, on the image's Python, is met by a carried wheel or
    by the image (at the version the device notes give, where they give one)."""
    carried = [gpu_image.read_wheel(p) for p in sorted(wheels.glob("*.whl"))]
    assert gpu_image.unmet_requirements(carried) == []


def test_the_completeness_check_refuses_what_the_image_lacks(wheels):
    """The check itself: a wheel left out, a carried version too old, an image version too old."""
    carried = [gpu_image.read_wheel(p) for p in sorted(wheels.glob("*.whl"))]
    without_pydantic = [w for w in carried if w.name != "pydantic"]
    assert any(
        "instructlab-training needs pydantic>=2.7.0: neither carried nor in the image" in line
        for line in gpu_image.unmet_requirements(without_pydantic)
    )
    old_dill = [
        gpu_image.Wheel(w.name, Version("0.3.0"), w.requires) if w.name == "dill" else w for w in carried
    ]
    assert "multiprocess needs dill>=0.4.1: carried dill is 0.3.0" in gpu_image.unmet_requirements(old_dill)
    old_torch = {**gpu_image.IMAGE_VERSIONS, "torch": "2.5.0"}
    assert "instructlab-training needs torch>=2.6.0: the image's torch is 2.5.0" in (
        gpu_image.unmet_requirements(carried, image_versions=old_torch)
    )
    extra_only = gpu_image.Wheel("x", Version("1"), (Requirement('flash-attn>=2; extra == "cuda"'),))
    assert gpu_image.unmet_requirements([extra_only]) == []  # an extra is not asked for


def python312() -> str | None:
    """A CPython 3.12 that runs here: one of pyenv's, or on PATH (a pyenv shim may not run)."""
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))
    candidates += [found] if (found := shutil.which("python3.12")) else []
    for candidate in candidates:
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True
        )
        if probe.returncode == 0 and probe.stdout.strip() == b"(3, 12)":
            return candidate
    return None


def test_the_wheels_install_into_a_clean_python_312_with_no_index(wheels, tmp_path):
    """gpu-check.sh's own unpacking, with a clean CPython 3.12 (no torch: the check itself then stops,
    and its exit status and log say so); the compiled wheels load there."""
    python = python312()
    if python is None:
        # No 3.12 here: pip's resolver checks that every wheel is one a CPython 3.12 on
        # manylinux x86-64 installs (the platforms gpu-wheels.sh downloads for: pip matches a
        # platform tag exactly), with no index and no dependency fetched.
        platforms = re.findall(r"--platform (\S+)", (SCRIPTS / "gpu-wheels.sh").read_text())
        assert "manylinux_2_28_x86_64" in platforms
        done = subprocess.run(
            [
                sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps",
                "--ignore-installed", "--target", str(tmp_path / "t"), "--python-version", "3.12",
                "--implementation", "cp", "--abi", "cp312",
                *(f"--platform={platform}" for platform in platforms),
                "--only-binary=:all:", *map(str, sorted(wheels.glob("*.whl"))),
            ],
            capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        pytest.skip("no CPython 3.12 here: checked with pip's --python-version 3.12 dry run only")
    site, out = tmp_path / "site", tmp_path / "out"
    env = {**os.environ, "PYTHON": python, "GPU_CHECK_SITE": str(site), "OUT": str(out)}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        ["bash", str(SCRIPTS / "gpu-check.sh"), str(wheels), "30"], env=env, capture_output=True, text=True
    )
    log = (out / "gpu-check.log").read_text()
    assert f"unpacking {len(listed())} wheels into {site}" in log
    assert (site / "instructlab" / "training" / "main_ds.py").is_file()
    # No torch in a clean 3.12: the check stops at once, and the pipeline's status is its own.
    assert done.returncode != 0 and "No module named 'torch'" in log
    probe = "import pydantic, pydantic_core, orjson, dill, multiprocess, tenacity, fsspec; print(pydantic.VERSION)"
    loaded = subprocess.run(
        [python, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {probe}"],
        capture_output=True,
        text=True,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == listed()["pydantic"][0]


# --- the model ---------------------------------------------------------------------------------


def test_the_gpu_model_has_the_intended_size():
    """Built from its config on the meta device (no memory): 350-400 M parameters, and the count the
    MFU uses (efficiency.parameter_count, from config.json) is the model's own."""
    import torch
    from transformers import LlamaForCausalLM

    from airflow_provider_sft.core.results.efficiency import parameter_count
    from airflow_provider_sft.core.training.tiny_model import build_tokenizer, model_config

    shape = dict(gpu_check.SIZES["gpu"].model)
    shape.pop("dtype")
    tokenizer = build_tokenizer(max_positions=shape["max_positions"])
    config = model_config(tokenizer, **shape)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    counted = sum(p.numel() for p in model.parameters())
    assert 350e6 <= counted <= 400e6
    assert parameter_count(config.to_dict()) == counted


def test_the_saved_model_keeps_the_dtype_asked_for(tmp_path):
    import json

    from airflow_provider_sft.core.training.tiny_model import build_tiny_model

    out = build_tiny_model(tmp_path / "m", hidden_size=32, num_layers=1, dtype="bfloat16")
    config = json.loads((out / "config.json").read_text())
    assert (config.get("dtype") or config.get("torch_dtype")) == "bfloat16"


# --- the same training, two ways ---------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_params(tmp_path_factory):
    return gpu_check.check_params(gpu_check.SIZES["gpu"], tmp_path_factory.mktemp("model"))


def test_our_main_ds_arguments_are_run_trainings_for_the_same_training_args(gpu_params, tmp_path):
    """The check's premise: our entrypoint and run_training give main_ds the same arguments (as its
    own argparser reads them), apart from where each run reads and writes."""
    ours = gpu_check_args.ours_main_ds_args(
        gpu_params, processed_dir=str(tmp_path / "ours" / "data"), output_dir=str(tmp_path / "ours")
    )
    train_args = gpu_check_args.training_args(
        gpu_params, dataset_path=str(tmp_path / "d.jsonl"), output_dir=tmp_path / "bare", cpu_procs=1
    )
    command = gpu_check_args.run_training_command(train_args, gpu_check_args.torchrun_args(1))
    assert command[0] == "torchrun" and "--nproc-per-node=1" in command
    bare = gpu_check_args.script_args(command)
    assert gpu_check_args.argument_differences(ours, bare) == {}
    parsed = gpu_check_args.parse_main_ds_args(ours)
    assert parsed["effective_batch_size"] == 128 and parsed["lr_scheduler"] == "cosine"
    assert parsed["distributed_training_framework"] == "fsdp" and parsed["checkpoint_at_epoch"]
    assert parsed["on_demand_checkpointing"] and not parsed["accelerate_full_state_at_epoch"]


def test_the_argument_comparison_sees_a_difference_and_refuses_what_main_ds_refuses(gpu_params, tmp_path):
    ours = gpu_check_args.ours_main_ds_args(gpu_params, processed_dir=str(tmp_path), output_dir=str(tmp_path))
    changed = [arg if not arg.startswith("--learning_rate=") else "--learning_rate=0.5" for arg in ours]
    assert gpu_check_args.argument_differences(ours, changed) == {"learning_rate": [1e-4, 0.5]}
    with pytest.raises(SystemExit):
        gpu_check_args.parse_main_ds_args([*ours, "--lr_scheduler=sometimes"])  # not one of its choices
    with pytest.raises(SystemExit):
        gpu_check_args.parse_main_ds_args([*ours, "--no_such_flag"])


# --- the budget and the report -----------------------------------------------------------------


def test_each_phase_gets_its_share_of_what_is_left():
    now = [0.0]
    budget = gpu_check.Budget(480, clock=lambda: now[0])
    now[0] = 40.0  # the model took 40 s
    assert budget.share(0.5) == pytest.approx((440 - 20) / 2)
    now[0] = 150.0  # ours finished early: bare gets the rest
    assert budget.share(1.0) == pytest.approx(480 - 150 - 20)
    now[0] = 1000.0
    assert budget.left() == 0 and budget.share(1.0) == 0


def write_metrics(path: Path, start_second: int, tokens: int, losses: list[float]) -> Path:
    """instructlab's step lines, one a second from ``start_second`` (UTC), ``tokens`` each."""
    import json

    lines = [json.dumps({"hparams": True, "learning_rate": 1e-4})]
    for i, loss in enumerate(losses):
        lines.append(
            json.dumps(
                {
                    "step": i + 1,
                    "epoch": 0,
                    "avg_loss": loss,
                    "num_tokens_rank0": tokens,
                    "samples_seen": 10 * (i + 1),
                    "cuda_mem_allocated": 3.0 + i,
                    "timestamp": f"2026-12-06T10:00:{start_second + i:02d}+00:00",
                }
            )
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_report_reads_both_runs_as_the_product_reads_one(tmp_path):
    config = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 100,
        "tie_word_embeddings": True,
        "model_type": "llama",
    }
    started = "2026-12-06T10:00:00+00:00"
    ours = gpu_check_report.PhaseOutcome(
        "ours", "completed", 30.0, 200.0, started,
        write_metrics(tmp_path / "ours.jsonl", 10, 1000, [4.0, 3.0, 2.5, 2.0, 1.5]), 5 * 2**30,
    )  # fmt: skip
    bare = gpu_check_report.PhaseOutcome(
        "bare", "completed", 25.0, 200.0, started,
        write_metrics(tmp_path / "bare.jsonl", 5, 2000, [4.0, 3.1, 2.5, 2.0]), 4 * 2**30,
    )  # fmt: skip
    report = gpu_check_report.build_report(ours, bare, model_config=config, gpu_name="NVIDIA H200", gpus=1)
    mine, theirs = report["phases"]["ours"]["efficiency"], report["phases"]["bare"]["efficiency"]
    # the first step's tokens are not timed: 4 x 1000 over 4 s, 3 x 2000 over 3 s
    assert mine["tokens_per_second_per_gpu"] == pytest.approx(1000)
    assert theirs["tokens_per_second_per_gpu"] == pytest.approx(2000)
    assert report["tokens_per_second_ratio"] == pytest.approx(0.5) and report["meets_target"] is False
    flops = 6 * mine["model_parameters"] + 12 * 2 * 64 * (5000 / 50)  # mean sample: 100 tokens
    assert mine["mfu"] == pytest.approx(1000 * flops / 989.5e12)
    assert mine["time_to_first_step_seconds"] == 10 and theirs["time_to_first_step_seconds"] == 5
    assert report["phases"]["ours"]["first_step_after_process_start_seconds"] is None  # no facts line
    assert report["phases"]["ours"]["max_cuda_mem_allocated_gib"] == 7.0
    assert report["phases"]["ours"]["peak_device_memory_bytes"] == 5 * 2**30
    assert report["loss_curves"][1] == {"step": 2, "ours": 3.0, "bare": 3.1}
    assert report["loss_curves"][4] == {"step": 5, "ours": 1.5, "bare": None}
    assert report["largest_loss_difference"] == pytest.approx(0.1)
    lines = gpu_check_report.summary_lines(report)
    assert lines[-1].startswith("ratio ours/bare 0.500 (target >= 0.98): NOT met")


def test_a_phase_without_metrics_is_reported_not_guessed(tmp_path):
    ours = gpu_check_report.PhaseOutcome("ours", "timed_out", 200.0, 200.0, None, None, None, "stopped")
    bare = gpu_check_report.PhaseOutcome(
        "bare", "completed", 25.0, 200.0, "2026-12-06T10:00:00+00:00",
        write_metrics(tmp_path / "bare.jsonl", 5, 2000, [4.0, 3.0]),
    )  # fmt: skip
    report = gpu_check_report.build_report(ours, bare, model_config=None, gpu_name="NVIDIA H200", gpus=1)
    assert report["phases"]["ours"] == {
        "status": "timed_out",
        "seconds": 200.0,
        "budget_seconds": 200.0,
        "detail": "stopped",
        "peak_device_memory_bytes": None,
        "efficiency": None,
        "steps": 0,
    }
    assert report["tokens_per_second_ratio"] is None and report["meets_target"] is None
    assert (
        report["phases"]["bare"]["efficiency"]["not_available"]["mfu"]
        == "the model's config.json could not be read"
    )

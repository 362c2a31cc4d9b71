"""The CPU SFT loop on instructlab-processed data from the tiny local model."""

from __future__ import annotations

import itertools
import json
import random
import statistics

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.results.export import checkpoint_problem
from airflow_provider_sft.core.sample_data import bundled_dataset_path
from airflow_provider_sft.core.training.cpu_trainer import (
    Sample,
    optimizer_steps,
    pack_micro_batches,
    train_on_cpu,
)
from airflow_provider_sft.core.training.data_processing import process_chat_data


def test_micro_batches_respect_the_token_budget():
    rng = random.Random(0)
    samples = [Sample([1] * n, [1] * n) for n in (rng.randint(20, 300) for _ in range(200))]
    batches = pack_micro_batches(samples, 1000)
    assert sorted(id(s) for b in batches for s in b) == sorted(id(s) for s in samples)
    for batch in batches:
        assert len(batch) * max(s.length for s in batch) <= 1000


def test_optimizer_steps_cover_each_sample_once_per_epoch_and_reshuffle():
    samples = [Sample([i], [i]) for i in range(10)]
    epoch0 = list(optimizer_steps(samples, 4, seed=1, epoch=0))
    assert [len(step) for step in epoch0] == [4, 4, 2]  # the remainder is trained on, not dropped
    assert sorted(s.input_ids[0] for step in epoch0 for s in step) == list(range(10))
    epoch1 = list(optimizer_steps(samples, 4, seed=1, epoch=1))
    assert epoch0 != epoch1
    assert epoch0 == list(optimizer_steps(samples, 4, seed=1, epoch=0))


@pytest.fixture(scope="module")
def processed(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("processed")
    report = process_chat_data(bundled_dataset_path(), out, model_path=str(tiny_model), max_seq_len=512)
    assert report.kept_samples == len(report.lengths) >= 200
    assert 0 < report.label_tokens < report.total_tokens  # only assistant tokens are trained on
    return report.processed_path


def metrics_lines(run_dir):
    lines = [json.loads(line) for line in (run_dir / c.METRICS_FILE).read_text().splitlines()]
    return lines[0], lines[1:]


def params(**values):
    base = {
        "resource_gpu_per_worker": 0,
        "max_seq_len": 512,
        "max_tokens_per_gpu": 4096,
        "learning_rate": 1e-3,
    }
    return SFTParams.parse({**base, **values})


@pytest.mark.slow
def test_loss_falls_and_instructlab_files_are_written(tiny_model, processed, tmp_path):
    run = tmp_path / "run"
    result = train_on_cpu(
        params(effective_batch_size=8, lr_warmup_steps=5, save_samples=100, envs="HF_TOKEN=hf_leak_check"),
        model_path=str(tiny_model),
        processed_data=processed,
        output_dir=run,
        log=lambda _line: None,
    )
    hparams, steps = metrics_lines(run)
    assert (
        hparams["hparams"] is True
        and hparams["learning_rate"] == 1e-3
        and hparams["lr_scheduler"] == "cosine"
    )
    assert len(steps) == result.steps == 30
    for key in (
        "epoch",
        "step",
        "avg_loss",
        "lr",
        "gradnorm",
        "overall_throughput",
        "num_loss_counted_tokens",
        "num_tokens_rank0",
        "samples_seen",
        "timestamp",
    ):
        assert key in steps[0]
    losses = [s["avg_loss"] for s in steps]
    assert statistics.mean(losses[-10:]) < statistics.mean(losses[:10]) - 1.0
    assert steps[0]["lr"] == 0.0 and steps[5]["lr"] == pytest.approx(1e-3)  # warmup, then the peak
    checkpoints = sorted(p.name for p in (run / c.HF_FORMAT_DIR).iterdir())
    # save_samples=100 -> at 104 and 200 samples seen; checkpoint_at_epoch -> at 235.
    assert checkpoints == ["samples_104", "samples_200", "samples_235"]
    assert all(checkpoint_problem(run / c.HF_FORMAT_DIR / name) is None for name in checkpoints)
    assert (run / c.FULL_STATE_DIR / "epoch_0" / "optimizer.bin").exists()
    assert "hf_leak_check" not in (run / c.METRICS_FILE).read_text()


@pytest.mark.parametrize(
    ("scheduler", "check"),
    [
        pytest.param("constant", lambda lrs: len(set(lrs)) == 1, id="constant"),
        pytest.param("linear", lambda lrs: all(a > b for a, b in itertools.pairwise(lrs)), id="linear"),
        pytest.param(
            "constant_with_warmup",
            lambda lrs: lrs[0] < lrs[1] < lrs[2] == lrs[3] == lrs[-1],
            id="constant-warmup",
        ),
    ],
)
def test_lr_scheduler_is_honoured(tiny_model, processed, tmp_path, scheduler, check):
    warmup = 2 if scheduler.endswith("warmup") else 0
    train_on_cpu(
        params(
            effective_batch_size=40,
            lr_scheduler=scheduler,
            lr_warmup_steps=warmup,
            accelerate_full_state_at_epoch=False,
        ),
        model_path=str(tiny_model),
        processed_data=processed,
        output_dir=tmp_path,
        log=lambda _line: None,
    )
    _, steps = metrics_lines(tmp_path)
    assert check([s["lr"] for s in steps]), [s["lr"] for s in steps]


def test_micro_batching_does_not_change_the_loss_and_the_seed_repeats_runs(tiny_model, processed, tmp_path):
    def first_steps(out, max_tokens, seed=7):
        train_on_cpu(
            params(
                effective_batch_size=32,
                max_tokens_per_gpu=max_tokens,
                max_seq_len=min(512, max_tokens),  # the processed samples are all shorter
                seed=seed,
                accelerate_full_state_at_epoch=False,
            ),
            model_path=str(tiny_model),
            processed_data=processed,
            output_dir=out,
            log=lambda _line: None,
        )
        _, steps = metrics_lines(out)
        return steps

    whole = first_steps(tmp_path / "whole", 100_000)
    split = first_steps(tmp_path / "split", 200)
    assert whole[0]["num_minibatches"] == 1 and split[0]["num_minibatches"] > 4
    # Gradient accumulation over micro-batches is the same optimisation step as one big batch.
    assert split[0]["avg_loss"] == pytest.approx(whole[0]["avg_loss"], rel=1e-5)
    assert split[0]["gradnorm"] == pytest.approx(whole[0]["gradnorm"], rel=1e-3)
    again = first_steps(tmp_path / "again", 100_000)
    assert [s["avg_loss"] for s in again] == [s["avg_loss"] for s in whole]
    other_seed = first_steps(tmp_path / "other", 100_000, seed=8)
    assert [s["avg_loss"] for s in other_seed] != [s["avg_loss"] for s in whole]

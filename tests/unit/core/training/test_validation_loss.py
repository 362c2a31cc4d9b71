"""The CPU loop's validation loss: instructlab's held-out samples, its loss, its metrics lines.

Checked against instructlab-training 0.16.2 itself: its ``TokenDataset.load_and_split`` chooses
the held-out samples, and its ``main_ds.compute_validation_loss`` computes the loss of the
checkpoint the CPU loop wrote, on its own validation data loader.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
from pathlib import Path

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.errors import DatasetError
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.sample_data import bundled_dataset_path
from airflow_provider_sft.core.training.cpu_trainer import Sample, load_processed_samples, train_on_cpu
from airflow_provider_sft.core.training.data_processing import process_chat_data
from airflow_provider_sft.core.training.held_out import split_held_out
from airflow_provider_sft.core.training.nodes import Topology

#: The keys of a validation line, as instructlab 0.16.2's metrics logger writes it
#: (``{"val_loss", "val_num_tokens"}`` with ``extra={"step": ...}``, then the async logger's timestamp).
INSTRUCTLAB_VALIDATION_KEYS = ["val_loss", "val_num_tokens", "step", "timestamp"]


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """instructlab's loader caches the JSON it reads: in the test's directory, not the user's home."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


@pytest.fixture(scope="module")
def processed(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("processed")
    return process_chat_data(
        bundled_dataset_path(), out, model_path=str(tiny_model), max_seq_len=512
    ).processed_path


def params(**values) -> SFTParams:
    base = {
        "resource_gpu_per_worker": 0,
        "max_seq_len": 512,
        "max_tokens_per_gpu": 4096,
        "learning_rate": 1e-3,
        "effective_batch_size": 16,
        "accelerate_full_state_at_epoch": False,
        "validation_split": 0.1,
    }
    return SFTParams.parse({**base, **values})


def metrics_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / c.METRICS_FILE).read_text().splitlines()]


def train(run_dir: Path, model: Path, processed: Path, **values):
    return train_on_cpu(
        params(**values),
        model_path=str(model),
        processed_data=processed,
        output_dir=run_dir,
        log=lambda _: None,
    )


@pytest.mark.parametrize(
    ("count", "fraction", "seed"), [(235, 0.1, 42), (30, 0.25, 7), (7, 0.5, 0), (10, 0.3, 1)]
)
def test_the_held_out_samples_are_the_ones_instructlab_holds_out(tmp_path, count, fraction, seed):
    """instructlab's own loader on the same file: the same samples held out, the rest in the same order."""
    from instructlab.training.sampler import TokenDataset

    data = tmp_path / "data.jsonl"
    rows = [{"input_ids": [i, i + 1], "labels": [-100, i], "len": 2} for i in range(count)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    train_ds, val_ds = TokenDataset.load_and_split(str(data), validation_split=fraction, seed=seed)

    train, held_out = split_held_out(load_processed_samples(data, max_tokens_per_gpu=10), fraction, seed)
    assert [s.input_ids[0] for s in held_out] == list(
        val_ds.dataset["input_ids"][i][0] for i in range(len(val_ds))
    )
    assert [s.input_ids[0] for s in train] == [row[0] for row in train_ds.dataset["input_ids"]]
    assert held_out and len(train) + len(held_out) == count


def test_no_split_trains_on_every_sample_in_order():
    samples = [Sample([i], [i]) for i in range(5)]
    assert split_held_out(samples, 0.0, 42) == (samples, [])


def test_a_split_that_leaves_nothing_to_train_on_is_named_before_training():
    samples = [Sample([i], [i]) for i in range(3)]
    with pytest.raises(DatasetError, match=r"validation_split=0\.9 holds out 3 of the 3 processed samples"):
        split_held_out(samples, 0.9, 42)


@pytest.fixture(scope="module")
def validated_run(tiny_model, processed, tmp_path_factory):
    """A real CPU run of the tiny model: 10% held out, validated every 4 steps."""
    run = tmp_path_factory.mktemp("validated") / "run"
    return run, train(run, tiny_model, processed, validation_frequency=4)


@pytest.mark.slow
def test_validation_lines_are_instructlabs_and_their_loss_is_main_ds_s(validated_run, processed, monkeypatch):
    """Every ``validation_frequency`` steps and after the last one, instructlab's keys; the last
    loss is what instructlab's ``compute_validation_loss`` gives for the final checkpoint."""
    run, result = validated_run
    rows = metrics_rows(run)
    hparams, steps = rows[0], [r for r in rows if "avg_loss" in r]
    validation = [r for r in rows if "val_loss" in r]
    # 235 samples: ceil(23.5) = 24 held out, 211 trained on in ceil(211 / 16) = 14 steps
    assert (hparams["total_samples"], hparams["validation_samples"], len(steps)) == (211, 24, 14)
    assert all(s["total_samples"] == 211 for s in steps)
    assert [list(r) for r in validation] == [INSTRUCTLAB_VALIDATION_KEYS] * 4
    assert [r["step"] for r in validation] == [4, 8, 12, 14]  # main_ds's schedule, then the end
    _, held_out = split_held_out(load_processed_samples(processed, max_tokens_per_gpu=4096), 0.1, 42)
    assert {r["val_num_tokens"] for r in validation} == {sum(s.label_tokens for s in held_out)}
    assert validation[-1]["val_loss"] < validation[0]["val_loss"]  # it learns what it did not see
    assert result.validation is not None and result.validation.loss == validation[-1]["val_loss"]
    # each line comes after its step's line
    assert [rows.index(v) - 1 for v in validation] == [rows.index(steps[s - 1]) for s in (4, 8, 12, 14)]

    expected = instructlabs_validation_loss(run / c.HF_FORMAT_DIR / "samples_211", processed, monkeypatch)
    assert validation[-1]["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-5)
    assert validation[-1]["val_num_tokens"] == expected["val_num_tokens"]


@pytest.mark.slow
def test_a_real_run_s_validation_reaches_metrics_json_and_the_chart(validated_run, tmp_path):
    """The export step writes metrics.json from the run's metrics file; the chart draws it."""
    from airflow_provider_sft.core.pod.steps import export
    from airflow_provider_sft.core.results.chart import write_loss_chart
    from airflow_provider_sft.core.results.metrics import read_metrics_log, summarize_log

    run, result = validated_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)  # the export prunes the run's checkpoints: the module's run stays whole
    config = {
        "run_dir": str(copy),
        "model_dir": str(copy / c.FINAL_MODEL_DIR),
        "metrics_path": str(copy / c.METRICS_SUMMARY_FILE),
    }
    exported = export(config, log=lambda _: None)
    written = json.loads((copy / c.METRICS_SUMMARY_FILE).read_text())
    lines = [r for r in metrics_rows(run) if "val_loss" in r]
    best = min(lines, key=lambda r: r["val_loss"])
    assert [v["step"] for v in written["validation"]] == [4, 8, 12, 14]
    assert (written["validation_loss"], written["validation_step"]) == (result.validation.loss, 14)
    assert (written["best_validation_loss"], written["best_validation_step"]) == (
        best["val_loss"],
        best["step"],
    )
    assert exported["metrics"]["validation"] == written["validation"]

    metrics = read_metrics_log(copy / c.METRICS_FILE)
    html = write_loss_chart(
        metrics.records, tmp_path / "chart.html", summary=summarize_log(metrics)
    ).read_text()
    assert '"name":"validation loss"' in html
    assert f'"name":"best validation loss {best["val_loss"]:.4f} (step {best["step"]})"' in html
    assert '"symbol":"star"' in html


def instructlabs_validation_loss(checkpoint: Path, processed: Path, monkeypatch) -> dict:
    """instructlab 0.16.2's ``compute_validation_loss`` on its own validation loader (one gloo rank)."""
    import torch
    import torch.distributed as dist
    from instructlab.training import main_ds
    from instructlab.training.sampler import get_data_loader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("LOCAL_RANK", "0")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        _, val_loader = get_data_loader(
            data_path=str(processed),
            batch_size=16,
            max_tokens_per_gpu=4096,
            seed=42,
            rank=0,
            world_size=1,
            flash_enabled=False,  # padded micro-batches, as on a CPU
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            validation_split=0.1,
        )
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
        return main_ds.compute_validation_loss(model, val_loader, torch.device("cpu"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def dropout_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with attention dropout: its training steps draw random numbers."""
    model = tmp_path_factory.mktemp("dropout") / "model"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.2}))
    return model


@pytest.mark.slow
def test_validating_changes_no_training_step(dropout_model, processed, tmp_path):
    """A validation every step, against one only at the end (same split): the same training, to 1e-6.

    With dropout each training step draws random numbers: a validation pass that drew any (in
    train mode) or left the model in eval mode would change every step after it.
    """
    often = train(tmp_path / "often", dropout_model, processed, validation_frequency=1)
    rarely = train(tmp_path / "rarely", dropout_model, processed, validation_frequency=10**6)
    often_rows, rarely_rows = metrics_rows(tmp_path / "often"), metrics_rows(tmp_path / "rarely")
    often_losses = [r["avg_loss"] for r in often_rows if "avg_loss" in r]
    rarely_losses = [r["avg_loss"] for r in rarely_rows if "avg_loss" in r]
    assert len(often_losses) == len(rarely_losses) == 14
    assert often_losses == pytest.approx(rarely_losses, abs=1e-6)
    assert [r["step"] for r in often_rows if "val_loss" in r] == list(range(1, 15))
    assert [r["step"] for r in rarely_rows if "val_loss" in r] == [14]  # the end only
    assert often.validation.loss == pytest.approx(rarely.validation.loss, abs=1e-6)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node(rank: int, port: int, model: str, processed: str, out: str, results) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    result = train_on_cpu(
        params(validation_frequency=5),
        model_path=model,
        processed_data=processed,
        output_dir=out,
        log=lambda _: None,
        topology=Topology(node_rank=rank, num_nodes=2, master_port=port),
    )
    results.put((rank, result.validation.loss, result.validation.tokens))


@pytest.mark.slow
def test_two_nodes_agree_with_each_other_and_with_one_node(tiny_model, processed, tmp_path):
    """Each node validates its share; the sums over both nodes give both of them one node's value."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    nodes = [
        context.Process(
            target=_node, args=(rank, port, str(tiny_model), str(processed), str(tmp_path / "two"), results)
        )
        for rank in (0, 1)
    ]
    for node in nodes:
        node.start()
    finals = dict((rank, (loss, tokens)) for rank, loss, tokens in (results.get(timeout=600) for _ in nodes))
    for node in nodes:
        node.join(timeout=60)
    assert [node.exitcode for node in nodes] == [0, 0]
    assert finals[0] == finals[1]  # bit for bit: every node has the all-reduced sum

    one = train(tmp_path / "one", tiny_model, processed, validation_frequency=5)
    two_lines = [r for r in metrics_rows(tmp_path / "two") if "val_loss" in r]
    one_lines = [r for r in metrics_rows(tmp_path / "one") if "val_loss" in r]
    assert [r["step"] for r in two_lines] == [r["step"] for r in one_lines] == [5, 10, 14]
    assert [r["val_loss"] for r in two_lines] == pytest.approx([r["val_loss"] for r in one_lines], rel=1e-4)
    assert finals[0] == (two_lines[-1]["val_loss"], one.validation.tokens)


@pytest.mark.slow
def test_a_preempted_and_resumed_run_validates_as_the_unbroken_one(tiny_model, processed, tmp_path):
    """SIGTERM right after the validation of step 8 of 28: the resumed attempt holds out the same
    samples, keeps the schedule (12, 16, ...) and ends with the unbroken run's losses."""
    import signal

    from airflow_provider_sft.core.errors import PreemptedError
    from airflow_provider_sft.core.results.metrics import read_metrics_log

    settings = {"validation_frequency": 4, "num_epochs": 2, "accelerate_full_state_at_epoch": True}
    train(tmp_path / "unbroken", tiny_model, processed, **settings)

    def stop_after_step_8(line: str) -> None:
        if line.startswith("validation at step 8:"):
            os.kill(os.getpid(), signal.SIGTERM)  # as the kubelet stops a preempted pod

    broken = tmp_path / "broken"
    with pytest.raises(PreemptedError):
        train_on_cpu(
            params(**settings),
            model_path=str(tiny_model),
            processed_data=processed,
            output_dir=broken,
            log=stop_after_step_8,
        )
    resumed = train_on_cpu(
        params(**settings),
        model_path=str(tiny_model),
        processed_data=processed,
        output_dir=broken,
        log=lambda _: None,
        resume_from=broken / c.FULL_STATE_DIR / "epoch_0",
    )
    unbroken_trace = read_metrics_log(tmp_path / "unbroken" / c.METRICS_FILE).validation
    resumed_trace = read_metrics_log(broken / c.METRICS_FILE).validation
    assert [v.step for v in resumed_trace] == [v.step for v in unbroken_trace] == [4, 8, 12, 16, 20, 24, 28]
    assert [v.val_loss for v in resumed_trace] == pytest.approx(
        [v.val_loss for v in unbroken_trace], abs=1e-6
    )
    assert resumed.validation.loss == pytest.approx(unbroken_trace[-1].val_loss, abs=1e-6)
